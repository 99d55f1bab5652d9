"""law_fast.ops.law_quadratic and law_fast.ops.law_adam_step_: every implementation against float64.

Implementations:
    ref     law_fast/kernels/law_step.py::law_*_ref (pure torch, the default kernels)
    cpp     the C++ CPU kernels in law_fast._C, reached through the dispatcher
    triton  law_fast/kernels/law_step.py::law_*_triton under TRITON_INTERPRET=1; the flag must be set
            before triton is imported, so these cases run in a child pytest process
            (test_triton_interpreter_suite) and are collected only there.
(The CUDA C++ kernels are compile-checked by .ci/compile_cuda.sh; no GPU here.)

Tolerances: an implementation's error against the float64 result may be at most twice the error
of the reference run in the same dtype, plus a few ulps of the dtype at the problem's scale.
LAW_FAST_REQUIRE_NATIVE=1 turns "law_fast._C not built" skips into failures (CI).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from law_fast import ops
from law_fast.kernels import law_step as kernels
from law_fast.kernels.law_step import (
    STATE_BOUND,
    STATE_FIRST_CONTACT,
    STATE_LR,
    STATE_RHO,
    STATE_SCALE,
    STATE_STEP,
    law_state,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
INTERPRETING = kernels.HAS_TRITON and kernels.triton_interpret_enabled()
REQUIRE_NATIVE = os.environ.get("LAW_FAST_REQUIRE_NATIVE", "0") == "1"
EPS = {torch.float32: torch.finfo(torch.float32).eps, torch.float64: torch.finfo(torch.float64).eps}


def _require_cpp(op: str) -> None:
    served = ops.backend_report()["ops"][op]["cpu"]
    if served == "cpp":
        return
    reason = f"the CPU op {op} is served by {served!r}, not the C++ kernel ({ops.backend_report()['native']})"
    if REQUIRE_NATIVE:
        pytest.fail(reason)
    pytest.skip(reason)


def quadratic_cpp(U, G, C):
    _require_cpp("law_quadratic")
    return ops.law_quadratic(U, G, C)


def adam_step_cpp(*args):
    _require_cpp("law_adam_step_")
    ops.law_adam_step_(*args)


QUADRATIC = {"ref": kernels.law_quadratic_ref, "cpp": quadratic_cpp}
ADAM_STEP = {"ref": kernels.law_adam_step_ref, "cpp": adam_step_cpp}


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny tensors: a second thread costs more than the work on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------- helpers


def make_matrix(rows: int, cols: int, dtype: torch.dtype, layout: str, seed: int) -> torch.Tensor:
    """(rows, cols) in dtype: "contiguous", "transposed" (strides (1, rows)) or "strided" (no unit stride)."""
    generator = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        return torch.randn(rows, cols, generator=generator, dtype=torch.float64).to(dtype)
    if layout == "transposed":
        return torch.randn(cols, rows, generator=generator, dtype=torch.float64).to(dtype).T
    if layout == "strided":
        return torch.randn(rows + 1, 2 * cols + 1, generator=generator, dtype=torch.float64).to(dtype)[1:, 1::2]
    raise ValueError(layout)


def make_problem(f: int, d: int, dtype: torch.dtype, layout: str = "contiguous", seed: int = 0):
    """U (f, d), G = AᵀA / f and C = BᵀB / f (symmetric PSD, like LaW's), the layout applied to all three."""
    U = make_matrix(f, d, dtype, layout, seed)
    A = torch.randn(f + 3, f, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    B = torch.randn(2 * f + 1, f, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    G = (A.T @ A / max(f, 1)).to(dtype)
    C = (B.T @ B / max(f, 1)).to(dtype)
    if layout == "transposed":
        G, C = G.T.contiguous().T, C.T.contiguous().T  # same values, column-major strides
    elif layout == "strided":
        G = torch.zeros(f, 2 * f, dtype=dtype)[:, ::2].copy_(G)
        C = torch.zeros(f, 2 * f, dtype=dtype)[:, ::2].copy_(C)
    return U, G, C


def check_quadratic(impl, U, G, C) -> None:
    """GU, uGu, uCu of impl against the float64 result; errors at most 2× those of the reference
    run in the same dtype, plus 8 ulps at the problem's scale."""
    exact = kernels.law_quadratic_ref(U.double(), G.double(), C.double())
    reference = kernels.law_quadratic_ref(U, G, C)
    got = impl(U, G, C)
    GU, uGu, uCu = got
    f, d = U.shape
    assert GU.shape == (f, d) and GU.dtype == U.dtype and GU.is_contiguous()
    for s in (uGu, uCu):
        assert s.dim() == 0 and s.dtype == torch.float64 and s.device == U.device
    eps = EPS[U.dtype]
    U_abs = U.double().abs()
    GU_scale = float((G.double().abs() @ U_abs).max()) if GU.numel() else 0.0
    sum_scales = [float((U_abs * (M.double().abs() @ U_abs)).sum()) for M in (G, C)]
    scales = [GU_scale] + sum_scales
    for name, value, ref, ex, scale in zip(("GU", "uGu", "uCu"), got, reference, exact, scales):
        error = float((value.double() - ex).abs().max()) if value.numel() else 0.0
        ref_error = float((ref.double() - ex).abs().max()) if ref.numel() else 0.0
        allowed = 2 * ref_error + 8 * eps * scale
        assert error <= allowed, f"{name}: error {error:.3e} > allowed {allowed:.3e} (reference {ref_error:.3e})"
    # the reductions are float64: uGu is Σ U∘GU of the returned GU up to float64 rounding
    own = float((U.double() * GU.double()).sum())
    assert abs(float(uGu) - own) <= 64 * EPS[torch.float64] * max(sum_scales[0], 1e-300)


QUADRATIC_CASES = [
    pytest.param(f, d, dtype, layout, id=f"f{f}-d{d}-{str(dtype)[6:]}-{layout}")
    for f, d in ((1, 1), (1, 5), (7, 1), (37, 19), (130, 70), (129, 257))
    for dtype in (torch.float32, torch.float64)
    for layout in ("contiguous", "transposed", "strided")
]


# ---------------------------------------------------------------- law_quadratic


@pytest.mark.parametrize("impl", QUADRATIC)
@pytest.mark.parametrize("f, d, dtype, layout", QUADRATIC_CASES)
def test_quadratic_matches_float64(impl, f, d, dtype, layout):
    check_quadratic(QUADRATIC[impl], *make_problem(f, d, dtype, layout))


@pytest.mark.parametrize("impl", QUADRATIC)
@pytest.mark.parametrize("f, d", [(0, 3), (4, 0), (0, 0)])
def test_quadratic_empty(impl, f, d):
    U, G, C = torch.zeros(f, d), torch.zeros(f, f), torch.zeros(f, f)
    GU, uGu, uCu = QUADRATIC[impl](U, G, C)
    assert GU.shape == (f, d) and float(uGu) == 0.0 and float(uCu) == 0.0


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_quadratic_cpp_independent_of_threads(threads):
    """Several 256-row × ≤384-column tiles per thread: same bits for every thread count (fixed partial order)."""
    _require_cpp("law_quadratic")
    U, G, C = make_problem(600, 400, torch.float32)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = ops.law_quadratic(U, G, C)
        torch.set_num_threads(threads)
        got = ops.law_quadratic(U, G, C)
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    check_quadratic(ops.law_quadratic, U, G, C)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quadratic_opcheck(dtype):
    U, G, C = make_problem(9, 4, dtype, "transposed")
    torch.library.opcheck(torch.ops.law_fast.law_quadratic.default, (U, G, C))


def test_quadratic_fake_on_meta():
    U, G, C = (torch.empty(5, 3, device="meta"), torch.empty(5, 5, device="meta"), torch.empty(5, 5, device="meta"))
    GU, uGu, uCu = ops.law_quadratic(U, G, C)
    assert GU.shape == (5, 3) and uGu.dtype == torch.float64 and uCu.shape == ()
    with pytest.raises(RuntimeError, match="C must have shape"):
        ops.law_quadratic(U, G, torch.empty(4, 4, device="meta"))


def _bad_quadratic_arguments():
    U, G, C = torch.zeros(4, 3), torch.zeros(4, 4), torch.zeros(4, 4)
    return [
        pytest.param(torch.zeros(4), G, C, "U must be a 2-D tensor", id="U-1d"),
        pytest.param(U.half(), G, C, "U must be float32 or float64", id="U-half"),
        pytest.param(U.int(), G, C, "U must be float32 or float64", id="U-int"),
        pytest.param(U, torch.zeros(4, 3), C, "G must have shape", id="G-shape"),
        pytest.param(U, torch.zeros(16), C, "G must have shape", id="G-1d"),
        pytest.param(U, G, torch.zeros(3, 3), "C must have shape", id="C-shape"),
        pytest.param(U, G.double(), C, "G must have U's dtype", id="G-dtype"),
        pytest.param(U, G, C.double(), "C must have U's dtype", id="C-dtype"),
    ]


@pytest.mark.parametrize("impl", QUADRATIC)
@pytest.mark.parametrize("U, G, C, message", _bad_quadratic_arguments())
def test_quadratic_bad_arguments_are_named(impl, U, G, C, message):
    with pytest.raises(RuntimeError, match=message):
        QUADRATIC[impl](U, G, C)


def test_quadratic_device_mismatch_is_named():
    U = torch.zeros(4, 3)
    with pytest.raises(RuntimeError, match="C must be on the same device as U"):
        kernels.law_quadratic_ref(U, torch.zeros(4, 4), torch.zeros(4, 4, device="meta"))


# ---------------------------------------------------------------- law_adam_step_

# state before the call: step, first contact, lr_after; and ρ(U) = uCu / tr(C) relative to β
ADAM_CASES = {
    #                  step, first, lr_after, rho/β, adam_update
    "inside": (3, -1.0, 1e-4, 0.5, True),
    "first-contact": (3, -1.0, 1e-4, 1.7, True),  # rescale, first_contact = 2, lr ← 1e-4
    "contact-again": (9, 4.0, 1e-4, 1.3, True),  # rescale, lr and first contact unchanged
    "no-lr-after": (3, -1.0, None, 1.7, True),  # first contact recorded, lr kept
    "step0-outside": (0, -1.0, 1e-4, 1.7, True),  # the initial iterate is never rescaled
    "rescale-only": (5, -1.0, 1e-4, 2.0, False),  # the final call: no Adam update
}


def make_adam_inputs(f: int, d: int, dtype: torch.dtype, case: str, seed: int = 0):
    """(U, GU, exp_avg, exp_avg_sq, state, uCu, adam_update) in dtype, state as after `step` steps."""
    step, first, lr_after, rho_over_beta, adam_update = ADAM_CASES[case]
    generator = torch.Generator().manual_seed(seed)
    U = torch.randn(f, d, generator=generator, dtype=torch.float64)
    GU = torch.randn(f, d, generator=generator, dtype=torch.float64) * 50
    exp_avg = torch.randn(f, d, generator=generator, dtype=torch.float64) * (10 if step else 0)
    exp_avg_sq = torch.rand(f, d, generator=generator, dtype=torch.float64) * (1e4 if step else 0)
    bound, trace_c = 0.3, 7.0
    state = law_state(1e-2, bound, trace_c, lr_after)
    state[STATE_STEP] = step
    state[STATE_FIRST_CONTACT] = first
    state[7], state[8] = 0.9**step, 0.999**step  # β1^step, β2^step
    uCu = torch.tensor(rho_over_beta * bound * trace_c, dtype=torch.float64)
    return U.to(dtype), GU.to(dtype), exp_avg.to(dtype), exp_avg_sq.to(dtype), state, uCu, adam_update


def run_adam(impl, inputs):
    U, GU, exp_avg, exp_avg_sq, state, uCu, adam_update = (
        t.clone() if isinstance(t, torch.Tensor) else t for t in inputs
    )
    step = ADAM_STEP[impl] if isinstance(impl, str) else impl
    step(U, GU, exp_avg, exp_avg_sq, state, uCu, adam_update)
    return U, exp_avg, exp_avg_sq, state


def check_adam(impl, f, d, dtype, case) -> None:
    inputs = make_adam_inputs(f, d, dtype, case)
    exact = run_adam("ref", [t.double() if isinstance(t, torch.Tensor) and t.dim() == 2 else t for t in inputs])
    reference = run_adam("ref", inputs)
    got = run_adam(impl, inputs)
    eps = EPS[dtype]
    for name, value, ref, ex in zip(("U", "exp_avg", "exp_avg_sq"), got[:3], reference[:3], exact[:3]):
        assert value.dtype == dtype
        if value.numel() == 0:
            continue
        error = float((value.double() - ex).abs().max())
        ref_error = float((ref.double() - ex).abs().max())
        allowed = 2 * ref_error + 4 * eps * float(ex.abs().max())
        assert error <= allowed, f"{case} {name}: error {error:.3e} > allowed {allowed:.3e} (reference {ref_error:.3e})"
    # the scalar part is float64 everywhere and identical in every implementation
    torch.testing.assert_close(got[3], exact[3], rtol=1e-15, atol=0, equal_nan=True)


ADAM_SHAPES = [(1, 1), (7, 3), (130, 70), (0, 4)]


@pytest.mark.parametrize("impl", ADAM_STEP)
@pytest.mark.parametrize("case", ADAM_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("f, d", ADAM_SHAPES)
def test_adam_step_matches_float64(impl, case, dtype, f, d):
    check_adam(impl, f, d, dtype, case)


@pytest.mark.parametrize("case", ADAM_CASES)
def test_adam_step_scalar_semantics(case):
    """The state after one call, by hand (reference implementation)."""
    step, first, lr_after, rho_over_beta, adam_update = ADAM_CASES[case]
    inputs = make_adam_inputs(3, 2, torch.float64, case)
    U0 = inputs[0].clone()
    U, _, _, state = run_adam("ref", inputs)
    contact = step >= 1 and rho_over_beta > 1
    scale = math.sqrt(1 / rho_over_beta) if contact else 1.0
    assert float(state[STATE_RHO]) == pytest.approx(rho_over_beta * float(state[STATE_BOUND]), rel=1e-15)
    assert float(state[STATE_SCALE]) == pytest.approx(scale, rel=1e-15)
    new_first = step - 1 if contact and first < 0 else first
    assert float(state[STATE_FIRST_CONTACT]) == new_first
    lr = lr_after if (contact and first < 0 and lr_after is not None) else 1e-2
    assert float(state[STATE_LR]) == lr
    assert float(state[STATE_STEP]) == step + (1 if adam_update else 0)
    if not adam_update:
        torch.testing.assert_close(U, U0 * scale, rtol=1e-15, atol=0)


@pytest.mark.parametrize("impl", ADAM_STEP)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_steps_equal_torch_optim_adam(impl, dtype):
    """Inside the constraint, a sequence of calls is torch.optim.Adam on the gradient −2·G·U."""
    U0, G, C = make_problem(20, 6, dtype)
    param = torch.nn.Parameter(U0.clone())
    optimizer = torch.optim.Adam([param], lr=3e-2)
    U = U0.clone()
    exp_avg, exp_avg_sq = torch.zeros_like(U), torch.zeros_like(U)
    state = law_state(3e-2, 1e30, 1.0)
    for _ in range(25):
        param.grad = -2 * (G @ param.detach())
        optimizer.step()
        GU, _, uCu = kernels.law_quadratic_ref(U, G, C)
        ADAM_STEP[impl](U, GU, exp_avg, exp_avg_sq, state, uCu, True)
    tolerance = {torch.float32: 2e-6, torch.float64: 1e-13}[dtype]
    assert float((U - param.detach()).abs().max() / param.detach().abs().max()) < tolerance
    assert float(state[STATE_STEP]) == 25 and float(state[STATE_FIRST_CONTACT]) == -1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("adam_update", [True, False])
def test_adam_step_opcheck(dtype, adam_update):
    U, GU, exp_avg, exp_avg_sq, state, uCu, _ = make_adam_inputs(5, 4, dtype, "first-contact")
    torch.library.opcheck(
        torch.ops.law_fast.law_adam_step_.default, (U, GU, exp_avg, exp_avg_sq, state, uCu, adam_update)
    )


def test_adam_step_fake_on_meta():
    meta = [t.to("meta") for t in make_adam_inputs(5, 4, torch.float32, "inside")[:6]]
    ops.law_adam_step_(*meta)
    with pytest.raises(RuntimeError, match="state must be a float64 tensor of shape"):
        ops.law_adam_step_(*meta[:4], torch.empty(3, dtype=torch.float64, device="meta"), meta[5])


def _bad_adam_arguments():
    U, GU, m, v, state, uCu, _ = make_adam_inputs(4, 3, torch.float32, "inside")
    return [
        pytest.param((torch.zeros(12), GU, m, v, state, uCu), "U must be a 2-D tensor", id="U-1d"),
        pytest.param((U.half(), GU, m, v, state, uCu), "U must be float32 or float64", id="U-half"),
        pytest.param((torch.zeros(3, 4).T, GU, m, v, state, uCu), "U must be contiguous", id="U-noncontiguous"),
        pytest.param((U, torch.zeros(4, 4), m, v, state, uCu), "GU must have U's shape", id="GU-shape"),
        pytest.param((U, GU.double(), m, v, state, uCu), "GU must have U's dtype", id="GU-dtype"),
        pytest.param(
            (U, GU, torch.zeros(3, 4).T, v, state, uCu), "exp_avg must be contiguous", id="exp_avg-noncontiguous"
        ),
        pytest.param((U, GU, m, v.double(), state, uCu), "exp_avg_sq must have U's dtype", id="exp_avg_sq-dtype"),
        pytest.param((U, GU, m, v, state[:8], uCu), "state must be a float64 tensor of shape", id="state-size"),
        pytest.param((U, GU, m, v, state.float(), uCu), "state must be a float64 tensor of shape", id="state-float32"),
        pytest.param(
            (U, GU, m, v, torch.zeros(32, dtype=torch.float64)[::2], uCu),
            "state must be contiguous",
            id="state-noncontiguous",
        ),
        pytest.param((U, GU, m, v, state, uCu.reshape(1)), "uCu must be a 0-dim float64 tensor", id="uCu-1d"),
        pytest.param((U, GU, m, v, state, uCu.float()), "uCu must be a 0-dim float64 tensor", id="uCu-float32"),
    ]


@pytest.mark.parametrize("impl", ADAM_STEP)
@pytest.mark.parametrize("args, message", _bad_adam_arguments())
def test_adam_step_bad_arguments_are_named(impl, args, message):
    before = [t.clone() for t in args]
    with pytest.raises(RuntimeError, match=message):
        ADAM_STEP[impl](*args, True)
    for t, t0 in zip(args, before):
        assert torch.equal(t, t0), "a rejected call must not touch its arguments"


def test_adam_step_device_mismatch_is_named():
    U, GU, m, v, state, uCu, _ = make_adam_inputs(4, 3, torch.float32, "inside")
    with pytest.raises(RuntimeError, match="uCu must be on the same device as U"):
        kernels.law_adam_step_ref(U, GU, m, v, state, uCu.to("meta"))


# ---------------------------------------------------------------- backends


def test_backend_report_lists_the_law_ops():
    report = ops.backend_report()
    for op in ("law_quadratic", "law_adam_step_"):
        served = report["ops"][op]
        assert set(served) == {"cpu", "cuda", "other"}
        expected = "cpp" if report["native"]["built"] and os.environ.get("LAW_FAST_USE_CPP", "1") != "0" else "torch"
        assert served["cpu"] == expected
        if report["native"]["built"]:
            assert op in report["native"]["cpu_kernels"]


CHILD_CHECK = """
import json, sys, torch
{prelude}
import law_fast.ops as ops
U = torch.randn(30, 7, dtype=torch.float64); G = torch.eye(30, dtype=torch.float64); C = 2 * G
GU, uGu, uCu = ops.law_quadratic(U, G, C)
report = ops.backend_report()["ops"]
print(json.dumps({{"error": float((GU - U).abs().max()) + abs(float(uCu) - 2 * float(uGu)),
                  "served": [report["law_quadratic"]["cpu"], report["law_adam_step_"]["cpu"]]}}))
"""


@pytest.mark.parametrize(
    "prelude, env",
    [
        ("", {"LAW_FAST_USE_CPP": "0"}),
        ("sys.modules['law_fast._C'] = None", {}),  # as if never built
    ],
    ids=["cpp-disabled", "native-missing"],
)
def test_pure_torch_fallback(prelude, env):
    import json

    result = subprocess.run(
        [sys.executable, "-c", CHILD_CHECK.format(prelude=prelude)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["served"] == ["torch", "torch"] and out["error"] < 1e-12


# ---------------------------------------------------------------- Triton (interpreter)


def test_launch_settings_fit_tl_dot():
    for f, d in ((1, 1), (7, 130), (1536, 576)):
        for dtype in (torch.float32, torch.float64):
            settings = kernels.launch_settings(f, d, dtype)
            assert min(settings["BLOCK_M"], settings["BLOCK_N"], settings["BLOCK_K"]) >= 16


TRITON_QUADRATIC_CASES = (
    QUADRATIC_CASES
    if INTERPRETING
    else [
        pytest.param(
            None,
            None,
            None,
            None,
            marks=pytest.mark.skip(
                reason="Triton cases run in a TRITON_INTERPRET=1 child process: see test_triton_interpreter_suite"
            ),
        )
    ]
)
TRITON_ADAM_CASES = (
    [
        pytest.param(case, dtype, f, d, id=f"{case}-{str(dtype)[6:]}-f{f}-d{d}")
        for case in ADAM_CASES
        for dtype in (torch.float32, torch.float64)
        for f, d in ADAM_SHAPES
    ]
    if INTERPRETING
    else [
        pytest.param(
            None, None, None, None, marks=pytest.mark.skip(reason="runs in the TRITON_INTERPRET=1 child process")
        )
    ]
)


@pytest.mark.parametrize("f, d, dtype, layout", TRITON_QUADRATIC_CASES)
def test_triton_interpreted_quadratic_matches_float64(f, d, dtype, layout):
    check_quadratic(kernels.law_quadratic_triton, *make_problem(f, d, dtype, layout))


@pytest.mark.parametrize("case, dtype, f, d", TRITON_ADAM_CASES)
def test_triton_interpreted_adam_step_matches_float64(case, dtype, f, d):
    check_adam(kernels.law_adam_step_triton, f, d, dtype, case)


@pytest.mark.skipif(not INTERPRETING, reason="runs in the TRITON_INTERPRET=1 child process")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_interpreted_law_optimize_trajectory(dtype):
    """The whole solver on the Triton kernels follows the reference kernels' trajectory."""
    from law_fast.config import LawConfig
    from law_fast.washing.law import LawKernels, law_optimize

    U, G, C = make_problem(40, 16, torch.float64)
    cfg = LawConfig(
        learning_rate=1e-3, lr_after_hitting_boundary=1e-5, total_iters=60, beta_ratio=1.02, law_dtype=str(dtype)[6:]
    )
    ours, report = law_optimize(
        U.T, G, C, cfg, kernels=LawKernels(kernels.law_quadratic_triton, kernels.law_adam_step_triton)
    )
    ref, ref_report = law_optimize(
        U.T, G, C, cfg, kernels=LawKernels(kernels.law_quadratic_ref, kernels.law_adam_step_ref)
    )
    assert report["first_contact"] == ref_report["first_contact"] is not None
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    assert float((ours - ref).norm() / ref.norm()) < tolerance


def test_triton_interpreter_suite():
    if not kernels.HAS_TRITON:
        pytest.skip(
            f"triton is not installed ({kernels.TRITON_IMPORT_ERROR}); `pip install triton` "
            "(CPU machines too) to test the Triton kernels in the interpreter"
        )
    if INTERPRETING:
        pytest.skip("this process already interprets Triton: the cases ran here")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", "triton_interpreted"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in summary and "failed" not in summary, summary
