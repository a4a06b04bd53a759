"""Float tolerances scaled to the computation, not fixed per element.

A float32 dot product of length ``k`` computed in *any* summation order (serial, parallel,
fastmath-reassociated, SIMD of any width) satisfies the classic bound
``|fl(sum a_i b_i) - sum a_i b_i| <= gamma_k * sum |a_i b_i|`` with ``gamma_k = k u / (1 - k u)``
and ``u = 2**-24`` (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5).
Two implementations of the same dot therefore differ by at most ``2 gamma_k sum |a_i b_i|``:
comparing against that bound passes on every CPU and thread count and still catches a wrong
term (an error of one term is of the order of ``|a_i b_i|``, far above ``k u`` times the sum).
"""

from __future__ import annotations

import numpy as np

U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32


def gamma(k: int, u: float = U32) -> float:
    return k * u / (1 - k * u)


def assert_dot_close(
    got: np.ndarray, want: np.ndarray, abs_sum: np.ndarray, k: int, extra_ops: int = 4
) -> None:
    """``got`` and ``want`` are two evaluations of dots whose ``sum |a_i b_i|`` is ``abs_sum``
    (same shape); ``extra_ops`` covers roundings outside the sum (scales, conversions)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    abs_sum = np.asarray(abs_sum, np.float64)
    assert got.shape == want.shape == abs_sum.shape, (got.shape, want.shape, abs_sum.shape)
    tol = 2 * gamma(k + extra_ops) * abs_sum + np.finfo(np.float32).tiny
    err = np.abs(got - want)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), (
        f"|diff| {err[worst]:.3g} > bound {tol[worst]:.3g} at {worst} "
        f"(k={k}, sum|ab|={abs_sum[worst]:.3g})"
    )
