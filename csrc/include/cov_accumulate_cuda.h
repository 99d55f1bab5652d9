// Raw launcher of the CUDA cov_accumulate_ kernel (csrc/cuda/cov_accumulate.cu).  Depends only on
// the CUDA runtime headers, so the kernel compiles (and is compile-checked by
// .ci/compile_cuda.sh) without torch; the torch binding is csrc/cuda/cov_accumulate_binding.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace law_fast {

enum class CovInputType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3 };
enum class CovAccumulatorType : int { kFloat32 = 0, kFloat64 = 1 };

// cov: (f, f) row-major contiguous on the device.  Upper triangle (i <= j) += (xᵀx)[i, j] in the
// accumulator type, then cov[j][i] = cov[i][j] for i < j.  x: (n, f) with element strides
// (stride_n, stride_f), any layout.  Enqueued on `stream`; returns cudaGetLastError() of the launch
// (cudaErrorInvalidValue for an unsupported dtype pair: float64 x needs a float64 cov).
cudaError_t launch_cov_accumulate_upper(const void* x, CovInputType x_type, int64_t n, int64_t f,
                                        int64_t stride_n, int64_t stride_f, void* cov,
                                        CovAccumulatorType cov_type, cudaStream_t stream);

}  // namespace law_fast
