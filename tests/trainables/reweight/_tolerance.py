"""How close a float32 Sinkhorn result must be to the same iterations in float64: a tolerance
derived from the problem instead of a fixed ``rtol``. A helper module, not a test module: the
test modules import it, never each other.

Why a fixed float32 rtol (2e-5, 5e-5, ...) is wrong for these tests: the rounding error of a
float32 run of ``n`` Sinkhorn iterations grows with ``n`` and with ``max |C| / eps``, and its
constant depends on the summation order of the BLAS/SIMD kernels, so a fixed bound tuned on one
CPU fails on another (the scaling-domain loop's test failed on an AMD EPYC with 1.41e-5
against 1.03e-5 allowed). Where the error comes from:

* ``n_iter``: the Sinkhorn map has a neutral direction, the gauge ``(U s, V / s)`` (``(f + t,
  g - t)`` for the potentials), with eigenvalue 1. The rounding each iteration adds along it
  is never damped, and the unrolled gradients with respect to ``a`` and ``b`` sum one adjoint
  term per iteration, so the error grows linearly in the iterations: measured linear up to 500
  iterations even at ``eps = 0.5``, where the loop has converged after ~10. A cap by the
  contraction rate (``min(n, 1 / (1 - kappa))``, the problem's conditioning) does not hold.
* ``max |C| / eps``: ``K = exp(-C / eps)``; ``exp``'s condition number at ``x`` is ``|x|``, so
  the rounding of ``-C / eps`` is a relative error ``u max|C| / eps`` in ``K``, the plan, and
  the gradient with respect to ``C`` (which carries ``1 / eps``). It dominates for few
  iterations and small ``eps``.

Hence ``tol = SAFETY * u * (n_iter + max|C| / eps)`` with ``u = finfo(float32).eps``, used as a
max-norm relative error, ``max |x - y| <= tol * max |y|`` (rtol 0): the gauge error shifts every
entry of a gradient by the same amount, so an elementwise rtol would fail on its small entries,
and ``rtol + atol`` together would let an error of up to ``2 tol`` through.

The constant, measured against float64 (seeds 0-24, the shapes of ``test_ot_matrix.py``, eps 0.1 /
200 and 0.05 / 37 iterations; NumPy/OpenBLAS and torch/MKL kernels on an Intel Xeon, and with
the Zen, Sandy Bridge and Prescott OpenBLAS kernels, ATen's AVX2 and default dispatch and MKL's
AVX2 / SSE4.2 code paths): at most 1.36 for the scaling-domain loop (then in NumPy and torch) and
0.5 for the forward ``sinkhorn`` (plan, f, g). ``SAFETY = 2`` leaves 1.5x headroom over that
worst case. (The log-domain reference's autograd gradients round more per iteration and reached
2.06: they are the float64 side of these comparisons, not checked by this bound in float32.)

It stays tight enough to fail on a real bug: at 200 iterations and eps 0.1 (``max|C| / eps``
about 10) ``tol`` is 5.0e-5, and a result off by a relative 1e-4 is off by at least 1e-4 minus
the rounding error (at most 1.36 * 210 u = 3.4e-5) = 6.6e-5 > 5.0e-5 from the float64
iterates; ``test_ot_matrix.py::test_the_float32_tolerance_still_catches_a_planted_error`` checks
that. The float64 checks keep their fixed 1e-10 or tighter.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SAFETY", "assert_close_normwise", "float32_tolerance"]

SAFETY = 2.0


def float32_tolerance(n_iter: int, eps: float, cost: Tensor | float) -> float:
    """Max-norm relative tolerance for float32 results of ``n_iter`` Sinkhorn iterations at
    ``eps`` on ``cost`` (a tensor, or its largest magnitude) against float64 (module doc)."""
    c_max = float(cost.detach().abs().max()) if isinstance(cost, Tensor) else abs(float(cost))
    return SAFETY * torch.finfo(torch.float32).eps * (n_iter + c_max / eps)


def assert_close_normwise(actual: Tensor, expected: Tensor, tol: float, msg: str = "") -> None:
    """``max |actual - expected| <= tol * max |expected|``, compared in float64 (``actual`` may
    be float32 against a float64 ``expected``)."""
    actual = actual.detach().double()
    expected = expected.detach().double()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(
        actual, expected, rtol=0.0, atol=tol * scale, msg=lambda m: f"{msg}\n{m}" if msg else m
    )


def float32_log_tolerance(n_iter: int, eps: float, cost: Tensor | float) -> float:
    """The same for the log-domain loop in float32, past float64's scaling range (``max|C| /
    eps`` over 300): every iteration rounds ``u_i - C_ij / eps`` (exp's argument) to an
    absolute error of ``u max|C| / eps``, not once as ``K`` is in the scaling domain, and the
    gauge carries it undamped, so the bound is ``u * n_iter * max|C| / eps`` (measured: 1/8 of
    it at 300 iterations of ``max|C| / eps = 2000``; the scaling bound was 16x too tight)."""
    c_max = float(cost.detach().abs().max()) if isinstance(cost, Tensor) else abs(float(cost))
    return torch.finfo(torch.float32).eps * n_iter * c_max / eps
