// Torch binding of the CUDA cov_accumulate_ kernel: checks, device guard, current stream.
// Compiled only in CUDA builds (setup.py / CMakeLists.txt); the kernel itself is
// csrc/cuda/cov_accumulate.cu and depends on CUDA headers only.

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cov_accumulate.h"
#include "cov_accumulate_cuda.h"

namespace law_fast {

namespace {

CovInputType input_type(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return CovInputType::kFloat32;
    case at::kBFloat16:
      return CovInputType::kBFloat16;
    case at::kHalf:
      return CovInputType::kFloat16;
    case at::kDouble:
      return CovInputType::kFloat64;
    default:
      TORCH_CHECK(false, "x must be float32, bfloat16, float16 or float64, got ", x.scalar_type());
  }
}

}  // namespace

void cov_accumulate_cuda(const at::Tensor& x, at::Tensor& cov, at::Tensor& count) {
  check_cov_accumulate_args(x, cov, count);
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor for the CUDA kernel, got ", x.device());
  const c10::cuda::CUDAGuard device_guard(x.device());
  const CovAccumulatorType cov_type =
      cov.scalar_type() == at::kDouble ? CovAccumulatorType::kFloat64 : CovAccumulatorType::kFloat32;
  C10_CUDA_CHECK(launch_cov_accumulate_upper(x.data_ptr(), input_type(x), x.size(0), x.size(1), x.stride(0),
                                             x.stride(1), cov.data_ptr(), cov_type,
                                             c10::cuda::getCurrentCUDAStream().stream()));
  count.add_(x.size(0));
}

}  // namespace law_fast
