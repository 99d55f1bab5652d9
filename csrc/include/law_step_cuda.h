// Raw launchers of the CUDA LaW kernels (csrc/cuda/law_step.cu).  Depend only on the CUDA runtime
// headers, so the kernels compile (and are compile-checked by .ci/compile_cuda.sh) without torch;
// the torch binding is csrc/cuda/law_step_binding.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace law_fast {

enum class LawFloatType : int { kFloat32 = 0, kFloat64 = 1 };

// Number of float64 workspace entries launch_law_quadratic_reduce needs for n elements.
int64_t law_quadratic_reduce_workspace(int64_t n);

// *uGu = Σ u[i]·gu[i] and *uCu = Σ u[i]·cu[i] over n contiguous elements of `type`, in float64.
// Deterministic for a given n: per-block partials in `workspace` (law_quadratic_reduce_workspace(n)
// doubles), then one block sums them in a fixed order.  Enqueued on `stream`.
cudaError_t launch_law_quadratic_reduce(const void* u, const void* gu, const void* cu, LawFloatType type,
                                        int64_t n, double* workspace, double* uGu, double* uCu,
                                        cudaStream_t stream);

// law_adam_step_ on n contiguous elements: one single-thread kernel updates `state`
// (float64[law_state::kSize], law_step_scalars.h) from *uCu, then the elementwise kernel applies
// the rescale and (if adam_update) the Adam update to u, exp_avg, exp_avg_sq.  Enqueued on
// `stream` (the elementwise kernel reads the state the first one wrote); no host sync.
cudaError_t launch_law_adam_step(void* u, const void* gu, void* exp_avg, void* exp_avg_sq, LawFloatType type,
                                 int64_t n, double* state, const double* uCu, bool adam_update,
                                 cudaStream_t stream);

}  // namespace law_fast
