// C++-level test of the CPU cov_accumulate_ kernel (run by ctest from the CMake build):
// law_fast::cov_accumulate_cpu against a naive double loop in float64, over shapes that hit the
// small path (one GEMM) and the tiled path (f >= 3 tiles of 256), non-contiguous inputs,
// bf16/fp16/fp32 inputs and fp32/fp64 accumulators, thread counts, and argument errors.
//
//   test_cov_accumulate            run the tests (exit code 0 = all passed)
//   test_cov_accumulate --bench    also time the kernel against at::addmm_ (f = 1536, n = 4096)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cov_accumulate.h"

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

// Naive float64 reference: upper(cov0 + xᵀx) mirrored; also returns the error scale
// max(|cov0| + |x|ᵀ|x|).
std::vector<double> naive(const at::Tensor& x, const at::Tensor& cov0, double* scale) {
  const at::Tensor x64 = x.to(at::kDouble).contiguous();
  const at::Tensor c64 = cov0.to(at::kDouble).contiguous();
  const int64_t n = x64.size(0);
  const int64_t f = x64.size(1);
  const double* xp = x64.data_ptr<double>();
  const double* cp = c64.data_ptr<double>();
  std::vector<double> out(static_cast<size_t>(f * f));
  *scale = 0.0;
  for (int64_t i = 0; i < f; ++i) {
    for (int64_t j = i; j < f; ++j) {
      double sum = cp[i * f + j];
      double magnitude = std::fabs(cp[i * f + j]);
      for (int64_t k = 0; k < n; ++k) {
        sum += xp[k * f + i] * xp[k * f + j];
        magnitude += std::fabs(xp[k * f + i] * xp[k * f + j]);
      }
      out[i * f + j] = sum;
      out[j * f + i] = sum;
      *scale = std::max(*scale, magnitude);
    }
  }
  return out;
}

at::Tensor make_x(int64_t n, int64_t f, at::ScalarType dtype, const std::string& layout) {
  if (layout == "transposed") return at::randn({f, n}).to(dtype).t();
  if (layout == "strided") return at::randn({n + 1, 2 * f + 1}).to(dtype).slice(0, 1).slice(1, 1, 2 * f + 1, 2);
  return at::randn({n, f}).to(dtype);
}

void check_case(int64_t n, int64_t f, at::ScalarType x_dtype, at::ScalarType cov_dtype, const std::string& layout) {
  const at::Tensor x = make_x(n, f, x_dtype, layout);
  const at::Tensor a = at::randn({f, f}, at::kDouble);
  const at::Tensor cov0 = (at::mm(a, a.t()) / std::max<int64_t>(f, 1)).to(cov_dtype);
  at::Tensor cov = cov0.clone();
  at::Tensor count = at::full({}, 5, at::kLong);
  law_fast::cov_accumulate_cpu(x, cov, count);

  char name[200];
  std::snprintf(name, sizeof(name), "n=%lld f=%lld x=%s cov=%s %s", static_cast<long long>(n),
                static_cast<long long>(f), c10::toString(x_dtype), c10::toString(cov_dtype), layout.c_str());
  expect(count.item<int64_t>() == 5 + n, std::string(name) + ": count += n");
  expect(at::equal(cov, cov.t()), std::string(name) + ": cov exactly symmetric");
  double scale = 0.0;
  const std::vector<double> expected = naive(x, cov0, &scale);
  const at::Tensor got = cov.to(at::kDouble).contiguous();
  const double* gp = got.data_ptr<double>();
  double max_error = 0.0;
  for (int64_t i = 0; i < f * f; ++i) max_error = std::max(max_error, std::fabs(gp[i] - expected[i]));
  // fp32 accumulation over n terms: a few n·eps of the magnitude is the rounding bound
  const double eps = cov_dtype == at::kFloat ? 1.2e-7 : 2.3e-16;
  const double allowed = (4.0 + 2.0 * std::sqrt(static_cast<double>(n))) * eps * std::max(scale, 1e-30);
  char detail[120];
  std::snprintf(detail, sizeof(detail), ": max error %.3e <= %.3e", max_error, allowed);
  expect(max_error <= allowed, std::string(name) + detail);
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
  at::Tensor x = at::zeros({4, 3});
  at::Tensor cov = at::zeros({3, 3});
  at::Tensor count = at::zeros({}, at::kLong);
  at::Tensor bad_cov = at::zeros({3, 6}).slice(1, 0, 6, 2);
  at::Tensor wrong_shape = at::zeros({3, 4});
  at::Tensor half_cov = at::zeros({3, 3}, at::kHalf);
  at::Tensor int_x = at::zeros({4, 3}, at::kInt);
  at::Tensor float_count = at::zeros({});
  at::Tensor x1d = at::zeros({4});
  expect_error([&] { law_fast::cov_accumulate_cpu(x, bad_cov, count); }, "cov must be contiguous");
  expect_error([&] { law_fast::cov_accumulate_cpu(x, wrong_shape, count); }, "cov must have shape (f, f)");
  expect_error([&] { law_fast::cov_accumulate_cpu(x, half_cov, count); }, "cov must be float32 or float64");
  expect_error([&] { law_fast::cov_accumulate_cpu(int_x, cov, count); }, "x must be float32, bfloat16");
  expect_error([&] { law_fast::cov_accumulate_cpu(x, cov, float_count); }, "count must be a 0-dim int64 tensor");
  expect_error([&] { law_fast::cov_accumulate_cpu(x1d, cov, count); }, "x must be a 2-D tensor");
}

void bench() {
  const int64_t n = 4096;
  const int64_t f = 1536;
  const at::Tensor x = at::randn({n, f});
  at::Tensor cov_op = at::zeros({f, f});
  at::Tensor cov_baseline = at::zeros({f, f});
  at::Tensor count = at::zeros({}, at::kLong);
  auto seconds = [](auto fn) {
    fn();  // warm-up
    double best = 1e30;
    for (int r = 0; r < 5; ++r) {
      const auto start = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return best;
  };
  const double t_op = seconds([&] { law_fast::cov_accumulate_cpu(x, cov_op, count); });
  const double t_baseline = seconds([&] { cov_baseline.addmm_(x.t(), x); });
  const double flops = 2.0 * n * f * f;
  std::printf("bench f=%lld n=%lld (best of 5, 2nf^2 FLOPs): cov_accumulate_cpu %.4f s (%.1f GFLOP/s), "
              "addmm_ %.4f s (%.1f GFLOP/s), speed-up %.2fx\n",
              static_cast<long long>(f), static_cast<long long>(n), t_op, flops / t_op / 1e9, t_baseline,
              flops / t_baseline / 1e9, t_baseline / t_op);
}

}  // namespace

int main(int argc, char** argv) {
  at::manual_seed(0);
  const int threads_before = at::get_num_threads();
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    for (int64_t f : {1, 7, 130, 600, 1000}) {
      for (int64_t n : {0, 1, 33, 300}) {
        if (f >= 600 && n == 1) continue;  // keep the naive loop short
        check_case(n, f, at::kFloat, at::kFloat, "contiguous");
        check_case(n, f, at::kBFloat16, at::kFloat, "transposed");
        check_case(n, f, at::kHalf, at::kDouble, "strided");
        check_case(n, f, at::kFloat, at::kDouble, "transposed");
      }
    }
  }
  at::set_num_threads(threads_before);
  check_case(50, 9, at::kDouble, at::kDouble, "contiguous");
  check_errors();
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) bench();
  return g_failures == 0 ? 0 : 1;
}
