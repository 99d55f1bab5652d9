// C++ CPU kernels of law_fast::law_quadratic and law_fast::law_adam_step_ (schemas and semantics:
// csrc/include/law_step.h, csrc/include/law_step_scalars.h).
//
// law_quadratic: the stacked product [G; C]·U in tiles of kRows rows × at most kMaxCols columns
// (equal widths), one task per tile inside one at::parallel_for region; each task runs one
// single-threaded BLAS GEMM (at::mm_out on views, no copies) and reduces its tile against the
// same entries of U in float64 while both are in cache.  G tiles are written straight into GU; C
// tiles go to a (kRows, width) buffer per thread, so C·U never exists beyond one tile.  Every
// tile's float64 partial sum is kept and the partials are added in tile order: the result does
// not depend on the thread count.  (On the development machine 1-thread MKL runs 256 × 288 tiles
// near the full-GEMM rate; 128-row panels, or a narrow 64-column remainder tile, lose 10-30%.)
//
// law_adam_step_: the scalar part (law_state::update) on the CPU state tensor, then one pass over
// the f·d elements with at::parallel_for.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "law_step.h"

namespace law_fast {
namespace {

constexpr int64_t kRows = 256;        // rows of G or C per task
constexpr int64_t kMaxCols = 384;     // columns of U per task at most (blocks of equal width)
constexpr int64_t kGrain = 1 << 14;   // elements per Adam task

// Σ a[i]·b[i] in float64 (four accumulators: independent chains, a fixed order).
template <typename scalar_t>
double dot_fp64(const scalar_t* a, const scalar_t* b, int64_t n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(a[i]) * static_cast<double>(b[i]);
    s1 += static_cast<double>(a[i + 1]) * static_cast<double>(b[i + 1]);
    s2 += static_cast<double>(a[i + 2]) * static_cast<double>(b[i + 2]);
    s3 += static_cast<double>(a[i + 3]) * static_cast<double>(b[i + 3]);
  }
  for (; i < n; ++i) s0 += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return (s0 + s1) + (s2 + s3);
}

// BLAS reads any view with a unit stride in one dimension in place; anything else is copied once.
at::Tensor blas_ready(const at::Tensor& m) {
  return (m.stride(0) == 1 || m.stride(1) == 1) ? m : m.contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> law_quadratic_cpu(const at::Tensor& U, const at::Tensor& G,
                                                                 const at::Tensor& C) {
  check_law_quadratic_args(U, G, C);
  TORCH_CHECK(U.device().is_cpu(), "U must be a CPU tensor for the CPU kernel, got ", U.device());
  at::AutoDispatchBelowADInplaceOrView guard;  // the GEMMs below must not be recorded

  const int64_t f = U.size(0);
  const int64_t d = U.size(1);
  at::Tensor GU = at::empty({f, d}, U.options());
  at::Tensor uGu = at::zeros({}, U.options().dtype(at::kDouble));
  at::Tensor uCu = at::zeros({}, U.options().dtype(at::kDouble));
  if (f == 0 || d == 0) return {GU, uGu, uCu};

  const at::Tensor U_rows = U.contiguous();  // row-major U for the reductions (and the GEMMs)
  const at::Tensor G_blas = blas_ready(G);
  const at::Tensor C_blas = blas_ready(C);
  const int64_t row_blocks = (f + kRows - 1) / kRows;
  const int64_t col_blocks = (d + kMaxCols - 1) / kMaxCols;
  const int64_t col_width = (d + col_blocks - 1) / col_blocks;  // no narrow last block
  const int64_t tiles = row_blocks * col_blocks;  // per matrix; tasks 0..tiles-1: G, then C
  std::vector<double> partial(static_cast<size_t>(2 * tiles), 0.0);

  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "law_quadratic_cpu", [&] {
    const scalar_t* u = U_rows.data_ptr<scalar_t>();
    at::parallel_for(0, 2 * tiles, 1, [&](int64_t t0, int64_t t1) {
      at::Tensor buffer;  // (kRows, col_width): this thread's tile of C·U
      for (int64_t t = t0; t < t1; ++t) {
        const bool is_c = t >= tiles;
        const int64_t tile = t % tiles;
        const int64_t r0 = (tile / col_blocks) * kRows;
        const int64_t c0 = (tile % col_blocks) * col_width;
        const int64_t rows = std::min(kRows, f - r0);
        const int64_t cols = std::min(col_width, d - c0);
        at::Tensor out;
        if (is_c) {
          if (!buffer.defined()) buffer = at::empty({kRows, col_width}, U.options());
          out = buffer.narrow(0, 0, rows).narrow(1, 0, cols);
        } else {
          out = GU.narrow(0, r0, rows).narrow(1, c0, cols);  // row stride d: BLAS writes it in place
        }
        at::mm_out(out, (is_c ? C_blas : G_blas).narrow(0, r0, rows), U_rows.narrow(1, c0, cols));
        const scalar_t* o = out.data_ptr<scalar_t>();
        double sum = 0.0;
        for (int64_t i = 0; i < rows; ++i) sum += dot_fp64(u + (r0 + i) * d + c0, o + i * out.stride(0), cols);
        partial[static_cast<size_t>(t)] = sum;
      }
    });
  });
  double sum_g = 0.0;
  double sum_c = 0.0;
  for (int64_t t = 0; t < tiles; ++t) {
    sum_g += partial[static_cast<size_t>(t)];
    sum_c += partial[static_cast<size_t>(tiles + t)];
  }
  uGu.fill_(sum_g);
  uCu.fill_(sum_c);
  return {GU, uGu, uCu};
}

void law_adam_step_cpu(at::Tensor& U, const at::Tensor& GU, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                       at::Tensor& state, const at::Tensor& uCu, bool adam_update) {
  check_law_adam_step_args(U, GU, exp_avg, exp_avg_sq, state, uCu);
  TORCH_CHECK(U.device().is_cpu(), "U must be a CPU tensor for the CPU kernel, got ", U.device());
  double* scalars = state.data_ptr<double>();
  law_state::update(scalars, *uCu.data_ptr<double>(), adam_update);

  const int64_t n = U.numel();
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "law_adam_step_cpu", [&] {
    const LawAdamScalars<scalar_t> s = law_adam_scalars<scalar_t>(scalars);
    scalar_t* u = U.data_ptr<scalar_t>();
    const scalar_t* gu = GU.data_ptr<scalar_t>();
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      if (adam_update) {
        for (int64_t i = i0; i < i1; ++i) law_adam_element(s, u[i], gu[i], m[i], v[i]);
      } else {
        for (int64_t i = i0; i < i1; ++i) u[i] = u[i] * s.scale;
      }
    });
  });
}

}  // namespace law_fast
