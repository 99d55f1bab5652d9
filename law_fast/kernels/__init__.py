"""Triton kernels of law_fast, one file per op (installed as ``law_fast.kernels``).

Each file holds the ``@triton.jit`` kernel(s), a thin host launcher (argument checks, launch
settings, grid) and a pure-torch ``*_ref`` reference that the tests, the benchmarks and the
default (any-device) kernel in ``law_fast.ops`` all import.  The ops themselves are defined in
``law_fast/ops.py``; nothing here registers anything with the dispatcher.

Modules:
    cov_accumulate   cov += xᵀx on the upper triangle, mirrored; count += n
    law_step         one LaW iteration in Gram form: law_quadratic ([G; C]·U with float64
                     reductions) and law_adam_step_ (rescale, lr drop, Adam), plus the state layout

Triton is optional: without it the modules still import and their ``*_ref`` functions work.
Kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (set before triton is imported).
"""
