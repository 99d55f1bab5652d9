// C++ CPU kernel of law_fast::cov_accumulate_ (schema and semantics: csrc/include/cov_accumulate.h).
//
// cov += xᵀx is a symmetric rank-n update (BLAS "SYRK"); torch exposes no SYRK, and the plain
// cov.addmm_(x.T, x) spends 2·n·f² FLOPs on both triangles.  Here only the upper triangle is
// computed, as GEMMs on views of x and cov (torch's BLAS: MKL / OpenBLAS, through at::addmm_,
// no copies), one per task:
//
//     cov[I, J] += x[:, I]ᵀ x[:, J]     I: a row panel of kTile rows, J: columns from I's diagonal
//                                       block onwards (the whole rest of the row, or a piece of it)
//
// Each diagonal block's upper triangle is done as two half-height GEMMs (3/4 of the block), so
// that is about n·f²·(1 + 0.75·kTile/f) FLOPs instead of 2·n·f².
// Tasks are planned by guided self-scheduling (whole wide panels first, smaller pieces last, so
// the threads finish together) and handed out from an atomic counter inside one
// at::parallel_for region; each task's GEMM runs single-threaded (BLAS does not spawn threads
// inside a parallel region).  Right after its GEMM a task copies its piece, transposed, into the
// lower triangle (cache-blocked), so the lower triangle of cov always equals the upper one.
// The regions the tasks write are disjoint (a diagonal block is never split between tasks).
//
// bf16 / fp16 inputs and fp32 → fp64 accumulation: x is upcast to cov's dtype in row chunks of
// at most kChunkBytes (never a full n×f copy in fp64), and each chunk is accumulated in turn.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "cov_accumulate.h"

namespace law_fast {
namespace {

constexpr int64_t kTile = 256;               // rows of a panel = side of the diagonal blocks
constexpr int64_t kColumnStep = 64;          // panel pieces are cut at multiples of this
constexpr int64_t kChunkBytes = 64ll << 20;  // upcast buffer: at most 64 MiB of cov's dtype
constexpr int64_t kMirrorBlock = 32;         // tile of the transpose copy (fits in L1)

// One task: the upper-triangle part of cov[i0 : i0 + rows, j0 : j0 + cols] += (xᵀx)[same], then
// mirror that piece into the lower triangle.
struct PanelTask {
  int64_t i0;
  int64_t rows;
  int64_t j0;
  int64_t cols;
};

// Row panels of kTile rows from the diagonal to the last column, cut into column pieces by
// guided self-scheduling: a piece is about 1/threads of the work not yet handed out (at least
// kColumnStep columns), so the first tasks are whole wide panels (efficient GEMMs) and the last
// ones small pieces that even out the threads' finishing times.  The first piece of a panel
// always holds its whole diagonal block.
std::vector<PanelTask> plan_panels(int64_t f, int64_t threads) {
  int64_t remaining = 0;  // work in rows × columns (× n)
  for (int64_t i0 = 0; i0 < f; i0 += kTile) remaining += std::min(kTile, f - i0) * (f - i0);
  std::vector<PanelTask> tasks;
  for (int64_t i0 = 0; i0 < f; i0 += kTile) {
    const int64_t rows = std::min(kTile, f - i0);
    for (int64_t j0 = i0; j0 < f;) {
      const int64_t left = f - j0;
      int64_t cols = (remaining / (threads * rows) + kColumnStep - 1) / kColumnStep * kColumnStep;
      cols = std::max(cols, j0 == i0 ? rows : kColumnStep);
      if (cols + kColumnStep > left) cols = left;  // no sliver at the end of a panel
      tasks.push_back({i0, rows, j0, cols});
      remaining -= rows * cols;
      j0 += cols;
    }
  }
  return tasks;
}

// cov[j][i] = cov[i][j] for every i < j with (i, j) in rows [i0, i0 + rows) × cols [j0, j0 + cols).
// Blocks are read row by row into a small buffer and written back transposed, so both sides
// stream through rows (reading a column touches one page per element).
template <typename scalar_t>
void mirror_piece(scalar_t* cov, int64_t f, int64_t i0, int64_t rows, int64_t j0, int64_t cols) {
  constexpr int64_t B = kMirrorBlock;
  scalar_t buffer[B][B];
  const int64_t i_end = i0 + rows;
  const int64_t j_end = j0 + cols;
  for (int64_t a = i0; a < i_end; a += B) {
    const int64_t a1 = std::min(a + B, i_end);
    for (int64_t b = j0; b < j_end; b += B) {
      const int64_t b1 = std::min(b + B, j_end);
      if (b1 - 1 <= a) continue;  // no element above the diagonal in this block
      for (int64_t i = a; i < a1; ++i) {
        const scalar_t* src = cov + i * f;
        for (int64_t j = b; j < b1; ++j) buffer[j - b][i - a] = src[j];
      }
      for (int64_t j = b; j < b1; ++j) {
        scalar_t* dst = cov + j * f;
        const int64_t i_stop = std::min(a1, j);
        for (int64_t i = a; i < i_stop; ++i) dst[i] = buffer[j - b][i - a];
      }
    }
  }
}

// Lower triangle := upper triangle for the whole matrix, row panels in parallel; panels are
// handed out in pairs (p, last - p) so that every pair has the same amount of work.
template <typename scalar_t>
void mirror_all(scalar_t* cov, int64_t f) {
  const int64_t panels = (f + kTile - 1) / kTile;
  auto panel = [cov, f](int64_t p) {
    const int64_t i0 = p * kTile;
    mirror_piece(cov, f, i0, std::min(kTile, f - i0), i0, f - i0);
  };
  at::parallel_for(0, (panels + 1) / 2, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      panel(p);
      if (panels - 1 - p != p) panel(panels - 1 - p);
    }
  });
}

// cov[i0 : i0 + rows, j0 : j0 + cols] += x[:, i0 : i0 + rows]ᵀ x[:, j0 : j0 + cols]
void gemm(const at::Tensor& x, at::Tensor& cov, int64_t i0, int64_t rows, int64_t j0, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  cov.narrow(0, i0, rows).narrow(1, j0, cols).addmm_(x.narrow(1, i0, rows).t(), x.narrow(1, j0, cols));
}

// Upper triangle of cov += xᵀx, then lower := upper.  x: (rows, f) in cov's dtype, with a unit
// stride in one dimension (BLAS reads it in place).
template <typename scalar_t>
void accumulate_symmetric(const at::Tensor& x, at::Tensor& cov) {
  const int64_t f = x.size(1);
  scalar_t* cov_data = cov.data_ptr<scalar_t>();
  if (f <= 2 * kTile) {  // little to save: one threaded GEMM on the whole matrix
    cov.addmm_(x.t(), x);
    mirror_all(cov_data, f);
    return;
  }
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const std::vector<PanelTask> tasks = plan_panels(f, threads);
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  std::atomic<int64_t> next_task{0};
  at::parallel_for(0, std::min(threads, num_tasks), 1, [&](int64_t, int64_t) {
    for (int64_t t = next_task++; t < num_tasks; t = next_task++) {
      const PanelTask& task = tasks[t];
      int64_t j0 = task.j0;
      if (j0 == task.i0) {  // diagonal block: its upper triangle in two half-height GEMMs
        const int64_t half = task.rows / 2;
        gemm(x, cov, task.i0, half, task.i0, task.rows);
        gemm(x, cov, task.i0 + half, task.rows - half, task.i0 + half, task.rows - half);
        j0 += task.rows;
      }
      gemm(x, cov, task.i0, task.rows, j0, task.j0 + task.cols - j0);
      mirror_piece(cov_data, f, task.i0, task.rows, task.j0, task.cols);
    }
  });
}

}  // namespace

void cov_accumulate_cpu(const at::Tensor& x, at::Tensor& cov, at::Tensor& count) {
  check_cov_accumulate_args(x, cov, count);
  TORCH_CHECK(x.device().is_cpu(), "x must be a CPU tensor for the CPU kernel, got ", x.device());
  // Kernels run below autograd: the GEMMs below must not be recorded.
  at::AutoDispatchBelowADInplaceOrView guard;

  const int64_t n = x.size(0);
  const int64_t f = x.size(1);
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "cov_accumulate_cpu", [&] {
    if (f == 0) return;
    if (n == 0) {  // nothing to add, but the contract still holds: lower := upper
      mirror_all(cov.data_ptr<scalar_t>(), f);
    } else if (x.scalar_type() == cov.scalar_type()) {
      // BLAS takes any view with a unit stride in one dimension (row-major or transposed x);
      // anything else is copied once here rather than inside every GEMM.
      const at::Tensor x_blas = (x.stride(0) == 1 || x.stride(1) == 1) ? x : x.contiguous();
      accumulate_symmetric<scalar_t>(x_blas, cov);
    } else {
      const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(n, kChunkBytes / (f * cov.element_size())));
      at::Tensor buffer = at::empty({rows, f}, cov.options());
      for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t rn = std::min(rows, n - r0);
        at::Tensor chunk = buffer.narrow(0, 0, rn);
        chunk.copy_(x.narrow(0, r0, rn));  // upcast to cov's dtype (vectorised, threaded)
        accumulate_symmetric<scalar_t>(chunk, cov);
      }
    }
  });
  count.add_(n);
}

}  // namespace law_fast
