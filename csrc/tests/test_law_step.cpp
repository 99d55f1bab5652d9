// C++-level test of the CPU LaW kernels (run by ctest from the CMake build):
// law_fast::law_quadratic_cpu against float64 ATen products over shapes that hit one and several
// 256-row or 384-column tiles, strided inputs, float32/float64 and thread counts (same bits for
// every count);
// law_fast::law_adam_step_cpu against a scalar float64 re-statement of the update; argument errors.
//
//   test_law_step            run the tests (exit code 0 = all passed)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "law_step.h"

namespace {

int g_failures = 0;
int g_checks = 0;

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

double max_abs(const at::Tensor& t) { return t.numel() ? t.abs().max().item<double>() : 0.0; }

void check_quadratic(int64_t f, int64_t d, at::ScalarType dtype, bool strided) {
  at::Tensor U = at::randn({f, d}, at::kDouble);
  at::Tensor A = at::randn({f + 2, f}, at::kDouble);
  at::Tensor G = at::mm(A.t(), A) / static_cast<double>(std::max<int64_t>(f, 1));
  at::Tensor C = G + at::eye(f, at::kDouble);
  at::Tensor Ut = U.to(dtype);
  at::Tensor Gt = G.to(dtype);
  at::Tensor Ct = C.to(dtype);
  if (strided) {  // U column-major, G with no unit stride
    Ut = Ut.t().contiguous().t();
    Gt = at::zeros({f, 2 * f}, Gt.options()).slice(1, 0, 2 * f, 2).copy_(Gt);
  }
  const auto [GU, uGu, uCu] = law_fast::law_quadratic_cpu(Ut, Gt, Ct);
  // float64 results from the rounded inputs
  const at::Tensor U64 = Ut.to(at::kDouble);
  const at::Tensor GU64 = at::mm(Gt.to(at::kDouble), U64);
  const double uGu64 = (U64 * GU64).sum().item<double>();
  const double uCu64 = (U64 * at::mm(Ct.to(at::kDouble), U64)).sum().item<double>();
  const double eps = dtype == at::kFloat ? 1.2e-7 : 2.3e-16;
  const double scale = max_abs(at::mm(Gt.to(at::kDouble).abs(), U64.abs()));
  const double sum_scale = (U64.abs() * at::mm(Ct.to(at::kDouble).abs(), U64.abs())).sum().item<double>();
  char name[120];
  std::snprintf(name, sizeof(name), "law_quadratic f=%lld d=%lld %s%s", static_cast<long long>(f),
                static_cast<long long>(d), c10::toString(dtype), strided ? " strided" : "");
  const double bound = 4.0 * std::sqrt(static_cast<double>(f) + 1.0) * eps;
  expect(GU.scalar_type() == dtype && GU.is_contiguous(), std::string(name) + ": GU dtype, layout");
  expect(max_abs(GU.to(at::kDouble) - GU64) <= bound * std::max(scale, 1e-300), std::string(name) + ": GU");
  expect(std::fabs(uGu.item<double>() - uGu64) <= bound * std::max(sum_scale, 1e-300), std::string(name) + ": uGu");
  expect(std::fabs(uCu.item<double>() - uCu64) <= bound * std::max(sum_scale, 1e-300), std::string(name) + ": uCu");
  // the reduction is float64 over the returned GU
  const double own = (U64 * GU.to(at::kDouble)).sum().item<double>();
  expect(std::fabs(uGu.item<double>() - own) <= 1e-13 * std::max(sum_scale, 1e-300), std::string(name) + ": fp64 sum");
  // same bits for another thread count
  const int threads = at::get_num_threads();
  at::set_num_threads(threads == 1 ? 2 : 1);
  const auto [GU2, uGu2, uCu2] = law_fast::law_quadratic_cpu(Ut, Gt, Ct);
  at::set_num_threads(threads);
  expect(at::equal(GU, GU2) && uGu.item<double>() == uGu2.item<double>() && uCu.item<double>() == uCu2.item<double>(),
         std::string(name) + ": independent of the thread count");
}

void check_adam(at::ScalarType dtype, bool contact, bool adam_update) {
  using namespace law_fast::law_state;
  const int64_t f = 33;
  const int64_t d = 5;
  at::Tensor U = at::randn({f, d}, at::kDouble).to(dtype);
  at::Tensor GU = (at::randn({f, d}, at::kDouble) * 10).to(dtype);
  at::Tensor m = at::randn({f, d}, at::kDouble).to(dtype);
  at::Tensor v = at::rand({f, d}, at::kDouble).to(dtype);
  at::Tensor state = at::zeros({kSize}, at::kDouble);
  double* s = state.data_ptr<double>();
  s[kStep] = 4; s[kLr] = 1e-2; s[kFirstContact] = -1; s[kBeta1Power] = std::pow(0.9, 4);
  s[kBeta2Power] = std::pow(0.999, 4); s[kBound] = 0.5; s[kTraceC] = 2.0; s[kLrAfter] = 1e-3;
  s[kBeta1] = 0.9; s[kBeta2] = 0.999; s[kEps] = 1e-8;
  const double rho = contact ? 0.8 : 0.3;
  const at::Tensor uCu = at::full({}, rho * 2.0, at::kDouble);
  // float64 copies of the inputs (clone: .to(kDouble) of a float64 tensor would alias it)
  const at::Tensor U0 = U.to(at::kDouble).clone(), GU0 = GU.to(at::kDouble).clone();
  const at::Tensor m0 = m.to(at::kDouble).clone(), v0 = v.to(at::kDouble).clone();
  law_fast::law_adam_step_cpu(U, GU, m, v, state, uCu, adam_update);

  const double scale = contact ? std::sqrt(0.5 / rho) : 1.0;
  const double lr = contact ? 1e-3 : 1e-2;
  char name[120];
  std::snprintf(name, sizeof(name), "law_adam_step %s contact=%d adam=%d", c10::toString(dtype), contact, adam_update);
  expect(std::fabs(s[kScale] - scale) <= 1e-15 && s[kLr] == lr && s[kFirstContact] == (contact ? 3.0 : -1.0) &&
             s[kStep] == (adam_update ? 5.0 : 4.0),
         std::string(name) + ": state");
  at::Tensor expected = U0 * scale;
  if (adam_update) {
    const at::Tensor g = GU0 * scale * -2.0;
    const at::Tensor m1 = m0 + 0.1 * (g - m0);
    const at::Tensor v1 = v0 * 0.999 + 0.001 * g * g;
    const double bc1 = 1 - std::pow(0.9, 5);
    const double bc2 = 1 - std::pow(0.999, 5);
    expected = expected - (lr / bc1) * m1 / (v1.sqrt() / std::sqrt(bc2) + 1e-8);
    expect(max_abs(m.to(at::kDouble) - m1) <= 8 * (dtype == at::kFloat ? 1.2e-7 : 2.3e-16) * max_abs(m1),
           std::string(name) + ": exp_avg");
  }
  const double eps = dtype == at::kFloat ? 1.2e-7 : 2.3e-16;
  expect(max_abs(U.to(at::kDouble) - expected) <= 8 * eps * max_abs(expected), std::string(name) + ": U");
}

template <typename Fn>
void expect_error(Fn fn, const std::string& message) {
  bool thrown = false;
  try {
    fn();
  } catch (const c10::Error& error) {
    thrown = std::string(error.what()).find(message) != std::string::npos;
    if (!thrown) std::printf("  unexpected message: %s\n", error.what_without_backtrace());
  }
  expect(thrown, "error mentioning '" + message + "'");
}

void check_errors() {
  at::Tensor U = at::zeros({4, 3});
  at::Tensor G = at::zeros({4, 4});
  at::Tensor state = at::zeros({law_fast::law_state::kSize}, at::kDouble);
  at::Tensor uCu = at::zeros({}, at::kDouble);
  at::Tensor m = at::zeros({4, 3});
  at::Tensor v = at::zeros({4, 3});
  at::Tensor U_t = at::zeros({3, 4}).t();
  at::Tensor short_state = at::zeros({3}, at::kDouble);
  at::Tensor float_uCu = at::zeros({});
  expect_error([&] { law_fast::law_quadratic_cpu(U, at::zeros({3, 3}), G); }, "G must have shape (f, f)");
  expect_error([&] { law_fast::law_quadratic_cpu(U, G, G.to(at::kDouble)); }, "C must have U's dtype");
  expect_error([&] { law_fast::law_quadratic_cpu(U.to(at::kHalf), G, G); }, "U must be float32 or float64");
  expect_error([&] { law_fast::law_adam_step_cpu(U_t, U, m, v, state, uCu, true); }, "U must be contiguous");
  expect_error([&] { law_fast::law_adam_step_cpu(U, U, m, v, short_state, uCu, true); }, "state must be a float64 tensor");
  expect_error([&] { law_fast::law_adam_step_cpu(U, U, m, v, state, float_uCu, true); }, "uCu must be a 0-dim float64");
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    for (int64_t f : {1, 7, 128, 300}) {
      for (int64_t d : {1, 9, 400}) {
        check_quadratic(f, d, dtype, false);
        check_quadratic(f, d, dtype, true);
      }
    }
    for (bool contact : {false, true}) {
      check_adam(dtype, contact, true);
      check_adam(dtype, contact, false);
    }
  }
  check_errors();
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
