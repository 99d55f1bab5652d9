// Torch bindings of the CUDA LaW kernels: checks, device guard, current stream.  Compiled only in
// CUDA builds (setup.py / CMakeLists.txt); the kernels are csrc/cuda/law_step.cu.
//
// law_quadratic on CUDA: G·U and C·U are two cuBLAS GEMMs (at::mm, which follows
// torch.backends.cuda.matmul.allow_tf32 for float32: off by default), then one fused kernel pair
// reduces Σ U∘GU and Σ U∘CU in float64.  Unlike the CPU and Triton kernels this materialises C·U
// as one (f, d) scratch tensor: on a GPU that is a few MiB, and cuBLAS outruns a hand-tiled GEMM.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include "law_step.h"
#include "law_step_cuda.h"

namespace law_fast {

namespace {

LawFloatType float_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? LawFloatType::kFloat64 : LawFloatType::kFloat32;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> law_quadratic_cuda(const at::Tensor& U, const at::Tensor& G,
                                                                  const at::Tensor& C) {
  check_law_quadratic_args(U, G, C);
  TORCH_CHECK(U.is_cuda(), "U must be a CUDA tensor for the CUDA kernel, got ", U.device());
  const c10::cuda::CUDAGuard device_guard(U.device());
  at::AutoDispatchBelowADInplaceOrView guard;  // the GEMMs below must not be recorded

  const at::Tensor U_contiguous = U.contiguous();
  at::Tensor GU = at::mm(G, U_contiguous).contiguous();
  const at::Tensor CU = at::mm(C, U_contiguous).contiguous();
  at::Tensor uGu = at::empty({}, U.options().dtype(at::kDouble));
  at::Tensor uCu = at::empty({}, U.options().dtype(at::kDouble));
  const int64_t n = U.numel();
  if (n == 0) {
    uGu.zero_();
    uCu.zero_();
    return {GU, uGu, uCu};
  }
  at::Tensor workspace = at::empty({law_quadratic_reduce_workspace(n)}, U.options().dtype(at::kDouble));
  C10_CUDA_CHECK(launch_law_quadratic_reduce(U_contiguous.data_ptr(), GU.data_ptr(), CU.data_ptr(), float_type(U), n,
                                             workspace.data_ptr<double>(), uGu.data_ptr<double>(),
                                             uCu.data_ptr<double>(), c10::cuda::getCurrentCUDAStream().stream()));
  return {GU, uGu, uCu};
}

void law_adam_step_cuda(at::Tensor& U, const at::Tensor& GU, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                        at::Tensor& state, const at::Tensor& uCu, bool adam_update) {
  check_law_adam_step_args(U, GU, exp_avg, exp_avg_sq, state, uCu);
  TORCH_CHECK(U.is_cuda(), "U must be a CUDA tensor for the CUDA kernel, got ", U.device());
  const c10::cuda::CUDAGuard device_guard(U.device());
  C10_CUDA_CHECK(launch_law_adam_step(U.data_ptr(), GU.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(),
                                      float_type(U), U.numel(), state.data_ptr<double>(), uCu.data_ptr<double>(),
                                      adam_update, c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace law_fast
