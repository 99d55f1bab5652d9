// CUDA kernel of law_fast::cov_accumulate_: symmetric rank-n update of an (f, f) accumulator.
//
// One thread block per 64×64 tile (ti, tj) of cov ON OR ABOVE the diagonal (ti <= tj); tiles
// below it are never computed.  Each block streams x in stages of 16 rows: both 64-column panels
// x[k0:k0+16, I] and x[k0:k0+16, J] are loaded into shared memory, upcast to the accumulator type
// (fp32 or fp64), and each of the 256 threads accumulates a 4×4 register micro-tile.  Epilogue:
// the block adds its tile to the upper-triangle entries of cov[I, J], stages the new values in
// shared memory, and writes them transposed to cov[J, I] (coalesced), so cov stays exactly
// symmetric.  Only CUDA headers here; launched on the caller's stream.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "cov_accumulate_cuda.h"

namespace law_fast {
namespace {

constexpr int kTile = 64;                 // cov tile side
constexpr int kStageRows = 16;            // rows of x per shared-memory stage
constexpr int kThreads = 256;             // 16 × 16 threads
constexpr int kThreadsPerSide = 16;
constexpr int kMicro = kTile / kThreadsPerSide;  // 4 × 4 outputs per thread
constexpr int kPitch = kTile + 1;         // padded shared-memory row: no bank conflicts
constexpr int kStageElems = kStageRows * kPitch;
constexpr int kOutElems = kTile * kPitch;
constexpr int kSharedElems = (2 * kStageElems > kOutElems) ? 2 * kStageElems : kOutElems;

template <typename acc_t>
__device__ __forceinline__ acc_t load_as(const float* p) { return static_cast<acc_t>(*p); }
template <typename acc_t>
__device__ __forceinline__ acc_t load_as(const double* p) { return static_cast<acc_t>(*p); }
template <typename acc_t>
__device__ __forceinline__ acc_t load_as(const __nv_bfloat16* p) { return static_cast<acc_t>(__bfloat162float(*p)); }
template <typename acc_t>
__device__ __forceinline__ acc_t load_as(const __half* p) { return static_cast<acc_t>(__half2float(*p)); }

// Upper-triangle tiles are numbered column by column: b = tj·(tj + 1)/2 + ti with 0 <= ti <= tj.
__device__ __forceinline__ void upper_tile_of_block(int64_t b, int64_t* ti, int64_t* tj) {
  int64_t j = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(b) + 1.0) - 1.0) * 0.5);
  while (j > 0 && j * (j + 1) / 2 > b) --j;        // fix floating-point rounding
  while ((j + 1) * (j + 2) / 2 <= b) ++j;
  *tj = j;
  *ti = b - j * (j + 1) / 2;
}

template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
cov_accumulate_upper_kernel(const in_t* __restrict__ x, int64_t n, int64_t f, int64_t stride_n,
                            int64_t stride_f, acc_t* __restrict__ cov, bool column_fastest) {
  __shared__ acc_t shared[kSharedElems];
  acc_t* panel_i = shared;                 // [kStageRows][kPitch]: x[k0 + r, row0 + c]
  acc_t* panel_j = shared + kStageElems;   // [kStageRows][kPitch]: x[k0 + r, col0 + c]

  int64_t ti = 0;
  int64_t tj = 0;
  upper_tile_of_block(static_cast<int64_t>(blockIdx.x), &ti, &tj);
  const int64_t row0 = ti * kTile;
  const int64_t col0 = tj * kTile;
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % kThreadsPerSide;
  const int ty = tid / kThreadsPerSide;

  acc_t acc[kMicro][kMicro];
#pragma unroll
  for (int m = 0; m < kMicro; ++m) {
#pragma unroll
    for (int q = 0; q < kMicro; ++q) acc[m][q] = acc_t(0);
  }

  for (int64_t k0 = 0; k0 < n; k0 += kStageRows) {
    // Consecutive threads read consecutive addresses: along columns when stride_f == 1,
    // along rows when x is column-major (stride_n == 1).
    for (int e = tid; e < kStageRows * kTile; e += kThreads) {
      const int r = column_fastest ? e / kTile : e % kStageRows;
      const int c = column_fastest ? e % kTile : e / kStageRows;
      const int64_t k = k0 + r;
      const int64_t ci = row0 + c;
      const int64_t cj = col0 + c;
      panel_i[r * kPitch + c] = (k < n && ci < f) ? load_as<acc_t>(x + k * stride_n + ci * stride_f) : acc_t(0);
      panel_j[r * kPitch + c] = (k < n && cj < f) ? load_as<acc_t>(x + k * stride_n + cj * stride_f) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kStageRows; ++r) {
      acc_t a[kMicro];
      acc_t b[kMicro];
#pragma unroll
      for (int m = 0; m < kMicro; ++m) {
        a[m] = panel_i[r * kPitch + ty + kThreadsPerSide * m];
        b[m] = panel_j[r * kPitch + tx + kThreadsPerSide * m];
      }
#pragma unroll
      for (int m = 0; m < kMicro; ++m) {
#pragma unroll
        for (int q = 0; q < kMicro; ++q) acc[m][q] += a[m] * b[q];
      }
    }
    __syncthreads();  // the panels are overwritten next (or reused by the epilogue)
  }

  // Upper-triangle entries of this tile: cov[i][j] += acc (i <= j); keep the new values.
  acc_t* tile = shared;  // [kTile][kPitch]
#pragma unroll
  for (int m = 0; m < kMicro; ++m) {
#pragma unroll
    for (int q = 0; q < kMicro; ++q) {
      const int li = ty + kThreadsPerSide * m;
      const int lj = tx + kThreadsPerSide * q;
      const int64_t i = row0 + li;
      const int64_t j = col0 + lj;
      if (i <= j && j < f) {
        acc_t* p = cov + i * f + j;
        const acc_t value = *p + acc[m][q];
        *p = value;
        tile[li * kPitch + lj] = value;
      }
    }
  }
  __syncthreads();
  // Mirror: cov[j][i] = cov[i][j] for i < j; consecutive threads write consecutive i.
  for (int e = tid; e < kTile * kTile; e += kThreads) {
    const int lj = e / kTile;
    const int li = e % kTile;
    const int64_t i = row0 + li;
    const int64_t j = col0 + lj;
    if (i < j && j < f) cov[j * f + i] = tile[li * kPitch + lj];
  }
}

template <typename in_t, typename acc_t>
cudaError_t launch_typed(const void* x, int64_t n, int64_t f, int64_t stride_n, int64_t stride_f,
                         void* cov, cudaStream_t stream) {
  const int64_t tiles = (f + kTile - 1) / kTile;
  const int64_t blocks = tiles * (tiles + 1) / 2;
  if (blocks == 0) return cudaSuccess;
  if (blocks > static_cast<int64_t>(INT_MAX)) return cudaErrorInvalidConfiguration;
  const bool column_fastest = stride_f == 1 || stride_n != 1;
  cov_accumulate_upper_kernel<in_t, acc_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
      static_cast<const in_t*>(x), n, f, stride_n, stride_f, static_cast<acc_t*>(cov), column_fastest);
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t launch_for_input(const void* x, CovInputType x_type, int64_t n, int64_t f, int64_t stride_n,
                             int64_t stride_f, void* cov, cudaStream_t stream) {
  switch (x_type) {
    case CovInputType::kFloat32:
      return launch_typed<float, acc_t>(x, n, f, stride_n, stride_f, cov, stream);
    case CovInputType::kBFloat16:
      return launch_typed<__nv_bfloat16, acc_t>(x, n, f, stride_n, stride_f, cov, stream);
    case CovInputType::kFloat16:
      return launch_typed<__half, acc_t>(x, n, f, stride_n, stride_f, cov, stream);
    case CovInputType::kFloat64:
      break;  // handled by the caller (float64 accumulators only)
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_cov_accumulate_upper(const void* x, CovInputType x_type, int64_t n, int64_t f,
                                        int64_t stride_n, int64_t stride_f, void* cov,
                                        CovAccumulatorType cov_type, cudaStream_t stream) {
  if (n < 0 || f < 0) return cudaErrorInvalidValue;
  if (cov_type == CovAccumulatorType::kFloat64) {
    if (x_type == CovInputType::kFloat64) {
      return launch_typed<double, double>(x, n, f, stride_n, stride_f, cov, stream);
    }
    return launch_for_input<double>(x, x_type, n, f, stride_n, stride_f, cov, stream);
  }
  if (cov_type == CovAccumulatorType::kFloat32) {
    return launch_for_input<float>(x, x_type, n, f, stride_n, stride_f, cov, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace law_fast
