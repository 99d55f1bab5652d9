// The scalar part of law_fast::law_adam_step_ (state layout and update), shared by the C++ CPU
// kernel and the CUDA kernel; depends on no torch or CUDA header.  The Python side
// (kernels/law_step.py: STATE_* and law_state_update_ref / _law_state_kernel) mirrors it.
//
// state: float64[kLawStateSize] on the op's device.
//   updated by every call                        constants (law_fast.kernels.law_step.law_state)
//   0 step       Adam steps taken so far           9 bound     β, the bound on ρ
//   1 lr         current learning rate            10 trace_c   tr(C)
//   2 first      iteration of the first contact,  11 lr_after  lr after the first contact (NaN: keep)
//                −1 before it                     12 beta1     Adam β1
//   3 rho        ρ before this call's rescale      13 beta2     Adam β2
//   4 scale      rescale factor of this call       14 eps       Adam eps
//   5 step_size  lr / (1 − β1^step)
//   6 bias_correction2_sqrt  √(1 − β2^step)
//   7, 8         β1^step, β2^step
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define LAW_FAST_HOST_DEVICE __host__ __device__
#else
#define LAW_FAST_HOST_DEVICE
#endif

namespace law_fast {
namespace law_state {

constexpr int kStep = 0;
constexpr int kLr = 1;
constexpr int kFirstContact = 2;
constexpr int kRho = 3;
constexpr int kScale = 4;
constexpr int kStepSize = 5;
constexpr int kBiasCorrection2Sqrt = 6;
constexpr int kBeta1Power = 7;
constexpr int kBeta2Power = 8;
constexpr int kBound = 9;
constexpr int kTraceC = 10;
constexpr int kLrAfter = 11;
constexpr int kBeta1 = 12;
constexpr int kBeta2 = 13;
constexpr int kEps = 14;
constexpr int kSize = 16;

// ρ = uCu / tr(C); contact = step >= 1 and ρ > β; scale = √(β/ρ) on contact, else 1.  The first
// contact records iteration step − 1 (the step that crossed) and switches lr to lr_after (unless
// NaN).  adam_update: step += 1 and the bias-corrected step size of that step.
LAW_FAST_HOST_DEVICE inline void update(double* state, double uCu, bool adam_update) {
  const double step = state[kStep];
  const double rho = uCu / state[kTraceC];
  const bool contact = step >= 1.0 && rho > state[kBound];
  if (contact && state[kFirstContact] < 0.0) {
    state[kFirstContact] = step - 1.0;
    const double lr_after = state[kLrAfter];
    if (lr_after == lr_after) state[kLr] = lr_after;  // not NaN
  }
  state[kRho] = rho;
  state[kScale] = contact ? ::sqrt(state[kBound] / rho) : 1.0;
  if (adam_update) {
    state[kStep] = step + 1.0;
    state[kBeta1Power] *= state[kBeta1];
    state[kBeta2Power] *= state[kBeta2];
    state[kStepSize] = state[kLr] / (1.0 - state[kBeta1Power]);
    state[kBiasCorrection2Sqrt] = ::sqrt(1.0 - state[kBeta2Power]);
  }
}

}  // namespace law_state

// The elementwise part, in the parameter's precision T (float or double); scalars come rounded
// to T, as torch.optim.Adam rounds its Python-float scalars for float32 parameters.
template <typename T>
struct LawAdamScalars {
  T scale;
  T one_minus_beta1;
  T beta2;
  T one_minus_beta2;
  T eps;
  T step_size;
  T bias_correction2_sqrt;
};

template <typename T>
LAW_FAST_HOST_DEVICE inline LawAdamScalars<T> law_adam_scalars(const double* state) {
  using namespace law_state;
  LawAdamScalars<T> s;
  s.scale = static_cast<T>(state[kScale]);
  s.one_minus_beta1 = static_cast<T>(1.0 - state[kBeta1]);
  s.beta2 = static_cast<T>(state[kBeta2]);
  s.one_minus_beta2 = static_cast<T>(1.0 - state[kBeta2]);
  s.eps = static_cast<T>(state[kEps]);
  s.step_size = static_cast<T>(state[kStepSize]);
  s.bias_correction2_sqrt = static_cast<T>(state[kBiasCorrection2Sqrt]);
  return s;
}

// One element: u ← s·u; g = −2·(s·gu); Adam (torch's lerp / addcmul / addcdiv order).
template <typename T>
LAW_FAST_HOST_DEVICE inline void law_adam_element(const LawAdamScalars<T>& s, T& u, T gu, T& m, T& v) {
  const T g = (gu * s.scale) * static_cast<T>(-2);
  m = m + s.one_minus_beta1 * (g - m);
  v = v * s.beta2 + (s.one_minus_beta2 * g) * g;
  const T denom = ::sqrt(v) / s.bias_correction2_sqrt + s.eps;
  u = u * s.scale + (-s.step_size) * (m / denom);
}

}  // namespace law_fast
