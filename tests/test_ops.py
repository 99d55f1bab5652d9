"""law_fast.ops: every implementation of each op against a float64 reference.

cov_accumulate_ implementations:
    ref     law_fast/kernels/cov_accumulate.py::cov_accumulate_ref (pure torch, the default kernel)
    cpp     the C++ CPU kernel in law_fast._C, reached through the dispatcher
    triton  law_fast/kernels/cov_accumulate.py::cov_accumulate_triton under TRITON_INTERPRET=1; the flag
            must be set before triton is imported, so these cases run in a child pytest process
            (test_triton_interpreter_suite) and are collected only there.

Tolerances: an implementation's error against the float64 result may be at most twice the error
of the reference run in the same dtypes, plus a few ulps of cov's dtype at the problem's scale.
LAW_FAST_REQUIRE_NATIVE=1 turns "law_fast._C not built" skips into failures (CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from law_fast import ops
from law_fast.kernels import cov_accumulate as kernels

REPO_ROOT = Path(__file__).resolve().parent.parent
INTERPRETING = kernels.HAS_TRITON and kernels.triton_interpret_enabled()
CPU_BACKEND = ops.backend_report()["ops"]["cov_accumulate_"]["cpu"]
REQUIRE_NATIVE = os.environ.get("LAW_FAST_REQUIRE_NATIVE", "0") == "1"


def _require_cpp() -> None:
    if CPU_BACKEND == "cpp":
        return
    reason = f"the CPU op is served by {CPU_BACKEND!r}, not the C++ kernel ({ops.backend_report()['native']})"
    if REQUIRE_NATIVE:
        pytest.fail(reason)
    pytest.skip(reason)


def run_ref(x, cov, count):
    kernels.cov_accumulate_ref(x, cov, count)


def run_cpp(x, cov, count):
    _require_cpp()
    ops.cov_accumulate_(x, cov, count)


def run_triton(x, cov, count):
    kernels.cov_accumulate_triton(x, cov, count)


IMPLEMENTATIONS = {"ref": run_ref, "cpp": run_cpp}


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny tensors: waking a second thread costs more than the work (milliseconds per op on a
    busy 2-core machine).  Tests of the threaded tiling set their own thread counts."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


EPS = {torch.float32: torch.finfo(torch.float32).eps, torch.float64: torch.finfo(torch.float64).eps}


# ---------------------------------------------------------------- helpers


def make_x(n: int, f: int, dtype: torch.dtype, layout: str, seed: int = 0) -> torch.Tensor:
    """(n, f) in dtype: "contiguous", "transposed" (strides (1, n)) or "strided" (no unit stride)."""
    generator = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        return torch.randn(n, f, generator=generator).to(dtype)
    if layout == "transposed":
        return torch.randn(f, n, generator=generator).to(dtype).T
    if layout == "strided":
        return torch.randn(n + 1, 2 * f + 1, generator=generator).to(dtype)[1:, 1::2]
    raise ValueError(layout)


def make_cov(f: int, dtype: torch.dtype, seed: int = 1, symmetric: bool = True) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(f, f, generator=generator, dtype=torch.float64)
    c = a @ a.T / max(f, 1) if symmetric else a
    return c.to(dtype)


def expected_cov(x: torch.Tensor, cov0: torch.Tensor) -> torch.Tensor:
    """float64: upper triangle of cov0 + xᵀx, mirrored (= cov0 + xᵀx for a symmetric cov0)."""
    x64 = x.to(torch.float64)
    full = cov0.to(torch.float64) + x64.T @ x64
    return kernels.mirror_upper_to_lower_(full)


def error_scale(x: torch.Tensor, cov0: torch.Tensor) -> float:
    """Magnitude that rounding errors scale with: max of |cov0| + |x|ᵀ|x|."""
    if x.shape[1] == 0:
        return 0.0
    x64 = x.to(torch.float64).abs()
    return float((cov0.to(torch.float64).abs() + x64.T @ x64).max())


def check_against_reference(impl, x: torch.Tensor, cov0: torch.Tensor) -> None:
    exact = expected_cov(x, cov0)
    cov_ref, count_ref = cov0.clone(), torch.zeros((), dtype=torch.int64)
    kernels.cov_accumulate_ref(x, cov_ref, count_ref)
    cov, count = cov0.clone(), torch.zeros((), dtype=torch.int64)
    impl(x, cov, count)

    assert cov.dtype == cov0.dtype and cov.shape == cov0.shape
    assert count.dtype == torch.int64 and count.dim() == 0 and int(count) == x.shape[0]
    assert torch.equal(cov, cov.T), "cov must be exactly symmetric"
    if cov.numel() == 0:
        return
    ref_error = float((cov_ref.to(torch.float64) - exact).abs().max())
    error = float((cov.to(torch.float64) - exact).abs().max())
    allowed = 2 * ref_error + 8 * EPS[cov0.dtype] * error_scale(x, cov0)
    assert error <= allowed, f"max error {error:.3e} > allowed {allowed:.3e} (reference error {ref_error:.3e})"


CASES = [
    pytest.param(f, n, x_dtype, cov_dtype, layout, id=f"f{f}-n{n}-{str(x_dtype)[6:]}-{str(cov_dtype)[6:]}-{layout}")
    for f in (1, 7, 64, 130)
    for n in (0, 1, 33)
    for x_dtype in (torch.float32, torch.bfloat16, torch.float16)
    for cov_dtype in (torch.float32, torch.float64)
    for layout in ("contiguous", "transposed", "strided")
]


# ---------------------------------------------------------------- correctness


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("f, n, x_dtype, cov_dtype, layout", CASES)
def test_cov_accumulate_matches_float64(impl, f, n, x_dtype, cov_dtype, layout):
    check_against_reference(IMPLEMENTATIONS[impl], make_x(n, f, x_dtype, layout), make_cov(f, cov_dtype))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_float64_input(impl):
    check_against_reference(
        IMPLEMENTATIONS[impl], make_x(20, 9, torch.float64, "transposed"), make_cov(9, torch.float64)
    )


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "f, n, x_dtype, cov_dtype, layout",
    [
        (600, 33, torch.float32, torch.float32, "contiguous"),  # 3 tiles of 256, the last partial
        (1000, 300, torch.float32, torch.float32, "transposed"),
        (1000, 300, torch.bfloat16, torch.float32, "strided"),
        (777, 100, torch.float32, torch.float64, "contiguous"),
    ],
)
def test_cpp_tiled_path(threads, f, n, x_dtype, cov_dtype, layout):
    """f >= 3 tiles: the tiled upper-triangle path with several tasks per thread count."""
    _require_cpp()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_against_reference(run_cpp, make_x(n, f, x_dtype, layout), make_cov(f, cov_dtype))
    finally:
        torch.set_num_threads(previous)


def test_cpp_upcast_in_several_chunks():
    """bf16 → fp64 with n·f·8 bytes above the 64 MiB upcast buffer: two row chunks."""
    _require_cpp()
    f, n = 1000, 8400
    check_against_reference(run_cpp, make_x(n, f, torch.bfloat16, "contiguous"), make_cov(f, torch.float64))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_repeated_calls_accumulate(impl):
    f = 70
    cov, count = torch.zeros(f, f), torch.zeros((), dtype=torch.int64)
    xs = [make_x(n, f, torch.bfloat16, "contiguous", seed=n) for n in (5, 0, 40, 1)]
    for x in xs:
        IMPLEMENTATIONS[impl](x, cov, count)
    assert int(count) == sum(x.shape[0] for x in xs)
    stacked = torch.cat(xs).to(torch.float64)
    torch.testing.assert_close(cov.to(torch.float64), stacked.T @ stacked, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_lower_triangle_is_overwritten_by_upper(impl):
    """The contract for a non-symmetric cov: upper += (xᵀx) upper, then lower := upperᵀ."""
    f = 600  # the tiled C++ path
    x, cov0 = make_x(17, f, torch.float32, "contiguous"), make_cov(f, torch.float64, symmetric=False)
    cov, count = cov0.clone(), torch.zeros((), dtype=torch.int64)
    IMPLEMENTATIONS[impl](x, cov, count)
    torch.testing.assert_close(cov, expected_cov(x, cov0), rtol=1e-12, atol=1e-10)


def test_fake_implementation_on_meta_tensors():
    """Meta tensors reach the fake implementation; shapes are checked there too."""
    x, cov, count = (
        torch.empty(5, 3, device="meta"),
        torch.empty(3, 3, device="meta"),
        torch.empty((), dtype=torch.int64, device="meta"),
    )
    ops.cov_accumulate_(x, cov, count)
    with pytest.raises(RuntimeError, match="cov must have shape"):
        ops.cov_accumulate_(x, torch.empty(4, 4, device="meta"), count)


@pytest.mark.parametrize(
    "x_dtype, cov_dtype, layout",
    [
        (torch.float32, torch.float32, "contiguous"),
        (torch.bfloat16, torch.float64, "transposed"),
    ],
)
def test_opcheck(x_dtype, cov_dtype, layout):
    x = make_x(9, 6, x_dtype, layout)
    cov, count = make_cov(6, cov_dtype), torch.zeros((), dtype=torch.int64)
    torch.library.opcheck(torch.ops.law_fast.cov_accumulate_.default, (x, cov, count))


# ---------------------------------------------------------------- argument errors


def _bad_arguments():
    x, cov, count = torch.zeros(4, 3), torch.zeros(3, 3), torch.zeros((), dtype=torch.int64)
    return [
        pytest.param(torch.zeros(4), cov, count, "x must be a 2-D tensor", id="x-1d"),
        pytest.param(x.int(), cov, count, "x must be float32, bfloat16, float16 or float64", id="x-int"),
        pytest.param(x, torch.zeros(3, 4), count, "cov must have shape", id="cov-shape"),
        pytest.param(x, torch.zeros(9), count, "cov must be a 2-D tensor", id="cov-1d"),
        pytest.param(x, cov.half(), count, "cov must be float32 or float64", id="cov-half"),
        pytest.param(x.double(), cov, count, "cov must be float64 when x is float64", id="x-f64-cov-f32"),
        pytest.param(x, torch.zeros(3, 6)[:, ::2], count, "cov must be contiguous", id="cov-noncontiguous"),
        pytest.param(x, cov, torch.zeros(1, dtype=torch.int64), "count must be a 0-dim int64 tensor", id="count-1d"),
        pytest.param(x, cov, torch.zeros(()), "count must be a 0-dim int64 tensor", id="count-float"),
    ]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("x, cov, count, message", _bad_arguments())
def test_bad_arguments_are_named(impl, x, cov, count, message):
    cov_before = cov.clone()
    with pytest.raises(RuntimeError, match=message):
        IMPLEMENTATIONS[impl](x, cov, count)
    assert torch.equal(cov, cov_before), "a rejected call must not touch cov"


def test_device_mismatch_is_named():
    x, cov = torch.zeros(4, 3), torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match="count must be on the same device as x"):
        kernels.cov_accumulate_ref(x, cov, torch.zeros((), dtype=torch.int64, device="meta"))


# ---------------------------------------------------------------- backends and fallbacks


def test_backend_report_is_json():
    report = ops.backend_report()
    json.dumps(report)
    served = report["ops"]["cov_accumulate_"]
    assert set(served) == {"cpu", "cuda", "other"}
    assert served["cpu"] == (
        "cpp" if report["native"]["built"] and os.environ.get("LAW_FAST_USE_CPP", "1") != "0" else "torch"
    )
    assert report["torch_build"]["threads"] == torch.get_num_threads() and "version" not in report["torch_build"]


def _run_child(code: str, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


CHILD_CHECK = """
import json, sys, torch
{prelude}
import law_fast.ops as ops
x = torch.randn(50, 40); cov = torch.zeros(40, 40); count = torch.zeros((), dtype=torch.int64)
ops.cov_accumulate_(x, cov, count)
error = float((cov - x.T @ x).abs().max())
report = ops.backend_report()
print(json.dumps({{"error": error, "count": int(count), "cpu": report["ops"]["cov_accumulate_"]["cpu"],
                  "built": report["native"]["built"]}}))
"""


def test_pure_torch_when_cpp_disabled():
    out = _run_child(CHILD_CHECK.format(prelude=""), LAW_FAST_USE_CPP="0")
    assert out["cpu"] == "torch" and out["count"] == 50 and out["error"] < 1e-3


def test_pure_torch_when_native_module_missing():
    # sys.modules[name] = None makes `import law_fast._C` raise ImportError, as if never built
    out = _run_child(CHILD_CHECK.format(prelude="sys.modules['law_fast._C'] = None"))
    assert out == {"error": out["error"], "count": 50, "cpu": "torch", "built": False}
    assert out["error"] < 1e-3


# ---------------------------------------------------------------- Triton (interpreter)


def test_launch_settings_fit_tl_dot():
    for f in (1, 7, 64, 130, 5000):
        for x_dtype in (torch.float32, torch.bfloat16):
            for cov_dtype in (torch.float32, torch.float64):
                settings = kernels.launch_settings(33, f, x_dtype, cov_dtype)
                assert settings["BLOCK_F"] >= 16 and settings["BLOCK_N"] >= 16


TRITON_CASES = (
    CASES
    if INTERPRETING
    else [
        pytest.param(
            None,
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


@pytest.mark.parametrize("f, n, x_dtype, cov_dtype, layout", TRITON_CASES)
def test_triton_interpreted_matches_float64(f, n, x_dtype, cov_dtype, layout):
    check_against_reference(run_triton, make_x(n, f, x_dtype, layout), make_cov(f, cov_dtype))


@pytest.mark.skipif(not INTERPRETING, reason="runs in the TRITON_INTERPRET=1 child process")
def test_triton_interpreted_accumulates_and_mirrors():
    f = 70
    cov, count = torch.zeros(f, f), torch.zeros((), dtype=torch.int64)
    xs = [make_x(n, f, torch.float16, "transposed", seed=n) for n in (5, 0, 40)]
    for x in xs:
        run_triton(x, cov, count)
    stacked = torch.cat(xs).to(torch.float64)
    assert int(count) == 45
    torch.testing.assert_close(cov.to(torch.float64), stacked.T @ stacked, rtol=1e-5, atol=1e-4)
    x, cov0 = make_x(17, 100, torch.float32, "contiguous"), make_cov(100, torch.float64, symmetric=False)
    cov = cov0.clone()
    run_triton(x, cov, count)
    torch.testing.assert_close(cov, expected_cov(x, cov0), rtol=1e-12, atol=1e-10)


def test_triton_interpreter_suite():
    if not kernels.HAS_TRITON:
        pytest.skip(
            f"triton is not installed ({kernels.TRITON_IMPORT_ERROR}); `pip install triton` "
            "(CPU machines too) to test the Triton kernel in the interpreter"
        )
    if INTERPRETING:
        pytest.skip("this process already interprets Triton: the cases ran here")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", "triton_interpreted"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in summary and "failed" not in summary, summary
