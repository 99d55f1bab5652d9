// Argument checks shared by every C++/CUDA binding: they fail loudly and name the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <string>

namespace law_fast {

// "x must be a 2-D tensor of shape (n, f), got shape [3]"
inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == dim, name, " must be a ", dim, "-D tensor of shape ", shape, ", got shape ",
              t.sizes());
}

// "cov must be float32 or float64, got Half"
inline void check_dtype(const at::Tensor& t, std::initializer_list<at::ScalarType> allowed,
                        const char* name, const char* allowed_text) {
  bool ok = false;
  for (at::ScalarType s : allowed) ok = ok || t.scalar_type() == s;
  TORCH_CHECK(ok, name, " must be ", allowed_text, ", got ", t.scalar_type());
}

// "cov must be on the same device as x (cpu), got cuda:0"
inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the same device as ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

}  // namespace law_fast
