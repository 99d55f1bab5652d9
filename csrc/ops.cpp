// law_fast._C: registers the C++ / CUDA kernels with the PyTorch dispatcher and reports what
// was built.  Op schemas are defined once, in law_fast/ops.py (torch.library); this module only
// adds implementations, and only when law_fast/ops.py asks for them (so that the environment
// switches LAW_FAST_USE_CPP=0 / LAW_FAST_USE_CUDA=0 can leave a device to another kernel):
//
//   law_fast._C.register_kernels("cpu")   -> True if newly registered, False if already done
//   law_fast._C.register_kernels("cuda")  -> likewise; raises if built without CUDA
//   law_fast._C.build_info()              -> dict (JSON-able) describing this build

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>
#include <torch/version.h>

#include <memory>
#include <string>
#include <vector>

#include "cov_accumulate.h"
#include "law_step.h"

#ifdef LAW_FAST_WITH_CUDA
#include <cuda_runtime_api.h>  // CUDART_VERSION
#endif

namespace law_fast {
namespace {

// The Library objects must outlive every call through the dispatcher; they are deliberately
// never destroyed (no static-destruction-order issues at interpreter exit).
std::vector<torch::Library*>& libraries() {
  static auto* libs = new std::vector<torch::Library*>();
  return *libs;
}

torch::Library& impl_library(c10::DispatchKey key) {
  libraries().push_back(new torch::Library(torch::Library::IMPL, "law_fast", key, __FILE__, __LINE__));
  return *libraries().back();
}

bool register_kernels(const std::string& device) {
  static bool cpu_registered = false;
  static bool cuda_registered = false;
  if (device == "cpu") {
    if (cpu_registered) return false;
    impl_library(c10::DispatchKey::CPU)
        .impl("cov_accumulate_", TORCH_FN(cov_accumulate_cpu))
        .impl("law_quadratic", TORCH_FN(law_quadratic_cpu))
        .impl("law_adam_step_", TORCH_FN(law_adam_step_cpu));
    cpu_registered = true;
    return true;
  }
  if (device == "cuda") {
#ifdef LAW_FAST_WITH_CUDA
    if (cuda_registered) return false;
    impl_library(c10::DispatchKey::CUDA)
        .impl("cov_accumulate_", TORCH_FN(cov_accumulate_cuda))
        .impl("law_quadratic", TORCH_FN(law_quadratic_cuda))
        .impl("law_adam_step_", TORCH_FN(law_adam_step_cuda));
    cuda_registered = true;
    return true;
#else
    (void)cuda_registered;
    TORCH_CHECK(false, "law_fast._C was built without CUDA kernels (rebuild with a CUDA build of "
                       "torch and CUDA_HOME set, or LAW_FAST_USE_CUDA=1)");
#endif
  }
  TORCH_CHECK(false, "register_kernels: unknown device '", device, "', expected 'cpu' or 'cuda'");
}

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
                          "." + std::to_string(TORCH_VERSION_PATCH);
#ifdef LAW_FAST_WITH_CUDA
  info["cuda"] = true;
  info["cuda_runtime_version"] = CUDART_VERSION;
#else
  info["cuda"] = false;
  info["cuda_runtime_version"] = pybind11::none();
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
#ifdef _GLIBCXX_USE_CXX11_ABI
  info["cxx11_abi"] = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
#endif
  info["cpu_kernels"] = std::vector<std::string>{"cov_accumulate_", "law_quadratic", "law_adam_step_"};
#ifdef LAW_FAST_WITH_CUDA
  info["cuda_kernels"] = std::vector<std::string>{"cov_accumulate_", "law_quadratic", "law_adam_step_"};
#else
  info["cuda_kernels"] = std::vector<std::string>{};
#endif
  return info;
}

}  // namespace
}  // namespace law_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "law_fast native kernels (schemas live in law_fast/ops.py)";
  m.def("register_kernels", &law_fast::register_kernels, pybind11::arg("device"),
        "Register this module's kernels for 'cpu' or 'cuda' with the dispatcher; False if already done.");
  m.def("build_info", &law_fast::build_info, "What this native module was built with (JSON-able dict).");
}
