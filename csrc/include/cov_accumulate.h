// law_fast::cov_accumulate_(Tensor x, Tensor(a!) cov, Tensor(b!) count) -> ()
//
//   x      (n, f) float32 / bfloat16 / float16 (or float64 with a float64 cov); any strides; n may be 0
//   cov    (f, f) float32 / float64, contiguous, on x's device: a symmetric accumulator
//   count  0-dim int64 on x's device
//
// Effect: the upper triangle (i <= j) of cov gets += (xᵀx)[i, j] computed in cov's dtype (x is
// upcast), the lower triangle is then overwritten by the upper one (cov stays exactly symmetric),
// and count += n.  No host synchronisation.  The schema is defined once, in law_fast/ops.py; this
// header only declares the kernels that implement it.
#pragma once

#include <ATen/core/Tensor.h>

#include "checks.h"

namespace law_fast {

// Checks shared by every implementation (the Python ones in kernels/cov_accumulate.py use the
// same messages).
inline void check_cov_accumulate_args(const at::Tensor& x, const at::Tensor& cov,
                                      const at::Tensor& count) {
  check_dim(x, 2, "x", "(n, f)");
  check_dtype(x, {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}, "x",
              "float32, bfloat16, float16 or float64");
  check_dim(cov, 2, "cov", "(f, f)");
  TORCH_CHECK(cov.size(0) == x.size(1) && cov.size(1) == x.size(1), "cov must have shape (f, f) = (",
              x.size(1), ", ", x.size(1), ") to match x of shape ", x.sizes(), ", got shape ", cov.sizes());
  check_dtype(cov, {at::kFloat, at::kDouble}, "cov", "float32 or float64");
  TORCH_CHECK(x.scalar_type() != at::kDouble || cov.scalar_type() == at::kDouble,
              "cov must be float64 when x is float64, got ", cov.scalar_type());
  TORCH_CHECK(cov.is_contiguous(), "cov must be contiguous");
  TORCH_CHECK(count.dim() == 0 && count.scalar_type() == at::kLong,
              "count must be a 0-dim int64 tensor, got shape ", count.sizes(), " and dtype ",
              count.scalar_type());
  check_same_device(cov, x, "cov", "x");
  check_same_device(count, x, "count", "x");
}

// C++ CPU kernel (csrc/cpu/cov_accumulate.cpp): blocked SYRK built from BLAS GEMMs on the
// diagonal and upper blocks, then a mirror of the upper triangle.
void cov_accumulate_cpu(const at::Tensor& x, at::Tensor& cov, at::Tensor& count);

#ifdef LAW_FAST_WITH_CUDA
// CUDA kernel binding (csrc/cuda/cov_accumulate_binding.cpp → csrc/cuda/cov_accumulate.cu).
void cov_accumulate_cuda(const at::Tensor& x, at::Tensor& cov, at::Tensor& count);
#endif

}  // namespace law_fast
