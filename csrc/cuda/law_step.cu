// CUDA kernels of law_fast::law_quadratic (the fused float64 reduction; the GEMMs are cuBLAS, see
// law_step_binding.cpp) and law_fast::law_adam_step_ (scalar kernel + elementwise kernel).
// Only CUDA headers here; every launch goes to the caller's stream.

#include <cuda_runtime.h>

#include <cstdint>

#include "law_step_cuda.h"
#include "law_step_scalars.h"

namespace law_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;              // reduction blocks (and workspace pairs) at most
constexpr int64_t kElementsPerThread = 8;     // reduction grid: about this many per thread

int reduce_blocks(int64_t n) {
  const int64_t per_block = kThreads * kElementsPerThread;
  const int64_t blocks = (n + per_block - 1) / per_block;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// In-block tree sum of two values per thread; thread 0 gets the totals.
__device__ __forceinline__ void block_sum2(double* shared_a, double* shared_b, double a, double b) {
  const int tid = static_cast<int>(threadIdx.x);
  shared_a[tid] = a;
  shared_b[tid] = b;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (tid < stride) {
      shared_a[tid] += shared_a[tid + stride];
      shared_b[tid] += shared_b[tid + stride];
    }
    __syncthreads();
  }
}

// Block b writes Σ u∘gu over its grid-stride share to workspace[b] and Σ u∘cu to workspace[blocks + b].
template <typename T>
__global__ void __launch_bounds__(kThreads)
law_quadratic_partials_kernel(const T* __restrict__ u, const T* __restrict__ gu, const T* __restrict__ cu,
                              int64_t n, double* __restrict__ workspace) {
  __shared__ double shared_g[kThreads];
  __shared__ double shared_c[kThreads];
  double sum_g = 0.0;
  double sum_c = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const double ui = static_cast<double>(u[i]);
    sum_g += ui * static_cast<double>(gu[i]);
    sum_c += ui * static_cast<double>(cu[i]);
  }
  block_sum2(shared_g, shared_c, sum_g, sum_c);
  if (threadIdx.x == 0) {
    workspace[blockIdx.x] = shared_g[0];
    workspace[gridDim.x + blockIdx.x] = shared_c[0];
  }
}

// One block: the partials in a fixed order → *uGu, *uCu.
__global__ void __launch_bounds__(kThreads)
law_quadratic_final_kernel(const double* __restrict__ workspace, int blocks, double* __restrict__ uGu,
                           double* __restrict__ uCu) {
  __shared__ double shared_g[kThreads];
  __shared__ double shared_c[kThreads];
  double sum_g = 0.0;
  double sum_c = 0.0;
  for (int b = static_cast<int>(threadIdx.x); b < blocks; b += kThreads) {
    sum_g += workspace[b];
    sum_c += workspace[blocks + b];
  }
  block_sum2(shared_g, shared_c, sum_g, sum_c);
  if (threadIdx.x == 0) {
    *uGu = shared_g[0];
    *uCu = shared_c[0];
  }
}

__global__ void law_state_kernel(double* __restrict__ state, const double* __restrict__ uCu, bool adam_update) {
  if (threadIdx.x == 0 && blockIdx.x == 0) law_state::update(state, *uCu, adam_update);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
law_adam_kernel(T* __restrict__ u, const T* __restrict__ gu, T* __restrict__ exp_avg, T* __restrict__ exp_avg_sq,
                const double* __restrict__ state, int64_t n, bool adam_update) {
  const LawAdamScalars<T> s = law_adam_scalars<T>(state);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    if (adam_update) {
      T ui = u[i];
      T mi = exp_avg[i];
      T vi = exp_avg_sq[i];
      law_adam_element(s, ui, gu[i], mi, vi);
      u[i] = ui;
      exp_avg[i] = mi;
      exp_avg_sq[i] = vi;
    } else {
      u[i] = u[i] * s.scale;
    }
  }
}

template <typename T>
cudaError_t launch_reduce_typed(const void* u, const void* gu, const void* cu, int64_t n, double* workspace,
                                double* uGu, double* uCu, cudaStream_t stream) {
  const int blocks = reduce_blocks(n);
  law_quadratic_partials_kernel<T><<<blocks, kThreads, 0, stream>>>(
      static_cast<const T*>(u), static_cast<const T*>(gu), static_cast<const T*>(cu), n, workspace);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  law_quadratic_final_kernel<<<1, kThreads, 0, stream>>>(workspace, blocks, uGu, uCu);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_adam_typed(void* u, const void* gu, void* exp_avg, void* exp_avg_sq, int64_t n,
                              double* state, const double* uCu, bool adam_update, cudaStream_t stream) {
  law_state_kernel<<<1, 1, 0, stream>>>(state, uCu, adam_update);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess || n == 0) return status;
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted > 65536 ? 65536 : wanted);  // grid-stride beyond that
  law_adam_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<T*>(u), static_cast<const T*>(gu),
                                                       static_cast<T*>(exp_avg), static_cast<T*>(exp_avg_sq),
                                                       state, n, adam_update);
  return cudaGetLastError();
}

}  // namespace

int64_t law_quadratic_reduce_workspace(int64_t n) { return 2 * static_cast<int64_t>(reduce_blocks(n)); }

cudaError_t launch_law_quadratic_reduce(const void* u, const void* gu, const void* cu, LawFloatType type,
                                        int64_t n, double* workspace, double* uGu, double* uCu,
                                        cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  switch (type) {
    case LawFloatType::kFloat32:
      return launch_reduce_typed<float>(u, gu, cu, n, workspace, uGu, uCu, stream);
    case LawFloatType::kFloat64:
      return launch_reduce_typed<double>(u, gu, cu, n, workspace, uGu, uCu, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_law_adam_step(void* u, const void* gu, void* exp_avg, void* exp_avg_sq, LawFloatType type,
                                 int64_t n, double* state, const double* uCu, bool adam_update,
                                 cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  switch (type) {
    case LawFloatType::kFloat32:
      return launch_adam_typed<float>(u, gu, exp_avg, exp_avg_sq, n, state, uCu, adam_update, stream);
    case LawFloatType::kFloat64:
      return launch_adam_typed<double>(u, gu, exp_avg, exp_avg_sq, n, state, uCu, adam_update, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace law_fast
