// law_fast::law_quadratic(Tensor U, Tensor G, Tensor C) -> (Tensor GU, Tensor uGu, Tensor uCu)
// law_fast::law_adam_step_(Tensor(a!) U, Tensor GU, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq,
//                          Tensor(d!) state, Tensor uCu, bool adam_update=True) -> ()
//
// One LaW iteration in Gram form (law-reference §5.3; algebra in docs/law_solver.md):
//   law_quadratic   U (f, d) float32/float64 any strides; G, C (f, f) U's dtype and device, any
//                   strides.  GU = G·U (f, d) contiguous in U's dtype; uGu = Σ U∘(G·U) and
//                   uCu = Σ U∘(C·U) as 0-dim float64 (products in U's dtype, sums in float64).
//   law_adam_step_  U, GU, exp_avg, exp_avg_sq (f, d) U's dtype, contiguous; state
//                   float64[law_state::kSize] (law_step_scalars.h); uCu 0-dim float64; one device.
//                   Pending rescale s (from uCu), lr drop at the first contact, Adam step with
//                   gradient −2·s·GU.  No host synchronisation on CUDA.
// The schemas are defined once, in law_fast/ops.py; this header declares the kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "checks.h"
#include "law_step_scalars.h"

namespace law_fast {

// Checks shared by every implementation (kernels/law_step.py uses the same messages).
inline void check_law_quadratic_args(const at::Tensor& U, const at::Tensor& G, const at::Tensor& C) {
  check_dim(U, 2, "U", "(f, d)");
  check_dtype(U, {at::kFloat, at::kDouble}, "U", "float32 or float64");
  const int64_t f = U.size(0);
  const at::Tensor* matrices[] = {&G, &C};
  const char* names[] = {"G", "C"};
  for (int i = 0; i < 2; ++i) {
    const at::Tensor& m = *matrices[i];
    TORCH_CHECK(m.dim() == 2 && m.size(0) == f && m.size(1) == f, names[i], " must have shape (f, f) = (", f,
                ", ", f, ") to match U of shape ", U.sizes(), ", got shape ", m.sizes());
    TORCH_CHECK(m.scalar_type() == U.scalar_type(), names[i], " must have U's dtype (", U.scalar_type(),
                "), got ", m.scalar_type());
    check_same_device(m, U, names[i], "U");
  }
}

inline void check_law_adam_step_args(const at::Tensor& U, const at::Tensor& GU, const at::Tensor& exp_avg,
                                     const at::Tensor& exp_avg_sq, const at::Tensor& state, const at::Tensor& uCu) {
  check_dim(U, 2, "U", "(f, d)");
  check_dtype(U, {at::kFloat, at::kDouble}, "U", "float32 or float64");
  TORCH_CHECK(U.is_contiguous(), "U must be contiguous");
  const at::Tensor* tensors[] = {&GU, &exp_avg, &exp_avg_sq};
  const char* names[] = {"GU", "exp_avg", "exp_avg_sq"};
  for (int i = 0; i < 3; ++i) {
    const at::Tensor& t = *tensors[i];
    TORCH_CHECK(t.sizes() == U.sizes(), names[i], " must have U's shape ", U.sizes(), ", got shape ", t.sizes());
    TORCH_CHECK(t.scalar_type() == U.scalar_type(), names[i], " must have U's dtype (", U.scalar_type(),
                "), got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), names[i], " must be contiguous");
    check_same_device(t, U, names[i], "U");
  }
  TORCH_CHECK(state.dim() == 1 && state.size(0) == law_state::kSize && state.scalar_type() == at::kDouble,
              "state must be a float64 tensor of shape [", law_state::kSize, "] (see law_state), got shape ",
              state.sizes(), " and dtype ", state.scalar_type());
  TORCH_CHECK(state.is_contiguous(), "state must be contiguous");
  check_same_device(state, U, "state", "U");
  TORCH_CHECK(uCu.dim() == 0 && uCu.scalar_type() == at::kDouble, "uCu must be a 0-dim float64 tensor, got shape ",
              uCu.sizes(), " and dtype ", uCu.scalar_type());
  check_same_device(uCu, U, "uCu", "U");
}

// C++ CPU kernels (csrc/cpu/law_step.cpp).
std::tuple<at::Tensor, at::Tensor, at::Tensor> law_quadratic_cpu(const at::Tensor& U, const at::Tensor& G,
                                                                 const at::Tensor& C);
void law_adam_step_cpu(at::Tensor& U, const at::Tensor& GU, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                       at::Tensor& state, const at::Tensor& uCu, bool adam_update);

#ifdef LAW_FAST_WITH_CUDA
// CUDA kernel bindings (csrc/cuda/law_step_binding.cpp → csrc/cuda/law_step.cu).
std::tuple<at::Tensor, at::Tensor, at::Tensor> law_quadratic_cuda(const at::Tensor& U, const at::Tensor& G,
                                                                  const at::Tensor& C);
void law_adam_step_cuda(at::Tensor& U, const at::Tensor& GU, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                        at::Tensor& state, const at::Tensor& uCu, bool adam_update);
#endif

}  // namespace law_fast
