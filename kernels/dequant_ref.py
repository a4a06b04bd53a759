"""Reference numbers for the RTL's floating-point datapath (numpy only; no edits to qmatmul).

* :func:`dequant_f32` -- one group's partial ``p = fp32(fp32(T) * s) * 2**e`` with the kernels'
  integer-path roundings (:func:`romsim.kernels.qmatmul.combine_int`: the product rounded to fp32,
  then the power of two applied in fp32). The cell's dequantizer (``romsim.rtl.fp.dequant_expr``)
  equals it bit for bit.
* :func:`group_partials` -- those partials for a run of groups of a matrix (what a cell emits).
  Summed ``((0 + p_0) + p_1) + ...`` over a row they give ``combine_int`` / ``qmatmul(path="int")``
  exactly (tested in ``sim/test_dequant_ref.py``).
* :func:`rowblock_sums` -- the row sums a row-block of consecutive cells produces. Each cell sums
  the groups it holds of a row in increasing K order starting from +0 (for a row held by one cell
  this *is* the kernel's order, bit-exact); a row split over two neighbouring cells is then
  ``piece_first_cell + piece_second_cell`` (one more fp32 add in the unit). For split rows this
  differs from the kernel's single left-to-right sum by reassociation only (a few ulp; bounded in
  the test).
"""

from __future__ import annotations

import numpy as np

from .qmatmul import QTensor, _pow2_f32


def dequant_f32(t: np.ndarray, scale_f16: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``fp32(fp32(t) * fp32(scale)) * fp32(2**e)``, elementwise (broadcasting), RNE."""
    tf = np.asarray(t).astype(np.float32)
    s = np.asarray(scale_f16, np.float16).astype(np.float32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return (tf * s) * _pow2_f32(np.asarray(e))


def group_partials(
    qt: QTensor, a: np.ndarray, e: np.ndarray, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Partials of row-major groups ``[start, stop)`` of affine/symmetric ``qt`` for activation
    mantissas ``a[M, Kp]`` and exponents ``e[M, ng]``: (``T`` int64 ``[M, n]``, ``p`` fp32
    ``[M, n]``)."""
    from .qmatmul import int_group_dots

    if qt.has_min:
        raise ValueError("group_partials covers the z-point formats (not Q4_1)")
    a = np.atleast_2d(a)
    e = np.atleast_2d(e)
    d, s = int_group_dots(qt, a)
    ng = qt.n_groups
    gidx = np.arange(start, stop)
    dd = d.reshape(a.shape[0], -1)[:, gidx].astype(np.int64)
    ss = s[:, gidx % ng].astype(np.int64)
    z = qt.zero.reshape(-1)[gidx].astype(np.int64)
    t = dd - z[None, :] * ss
    sc = qt.scale.reshape(-1)[gidx].astype(np.float16)
    return t, dequant_f32(t, sc[None, :], e[:, gidx % ng])


def rowblock_sums(
    qt: QTensor, a: np.ndarray, e: np.ndarray, runs: list[tuple[int, int]]
) -> tuple[int, np.ndarray]:
    """Row sums of a row-block of cells holding consecutive group runs ``runs`` (``[start,
    stop)`` each, contiguous). Returns (first row, fp32 ``[M, rows]``) in the documented order
    (module docstring). A row may span at most two cells; rows only partly inside the block get
    the sum of the part inside."""
    for (_, b), (c, _) in zip(runs[:-1], runs[1:], strict=True):
        if b != c:
            raise ValueError("runs must be contiguous")
    ngr = qt.n_groups
    g0, g1 = runs[0][0], runs[-1][1]
    r0, r1 = g0 // ngr, (g1 - 1) // ngr
    a = np.atleast_2d(a)
    M = a.shape[0]
    out = np.zeros((M, r1 - r0 + 1), np.float32)
    pieces: dict[int, list[np.ndarray]] = {}
    for start, stop in runs:
        _, p = group_partials(qt, a, e, start, stop)
        acc = None
        for i, g in enumerate(range(start, stop)):
            if acc is None or g % ngr == 0:
                acc = np.zeros(M, np.float32)
            with np.errstate(over="ignore", invalid="ignore"):
                acc = acc + p[:, i]
            if g == stop - 1 or g % ngr == ngr - 1:
                pieces.setdefault(g // ngr - r0, []).append(acc)
    for r, ps in pieces.items():
        if len(ps) > 2:
            raise ValueError(f"row {r0 + r} spans more than two cells")
        with np.errstate(over="ignore", invalid="ignore"):
            out[:, r] = ps[0] if len(ps) == 1 else ps[0] + ps[1]
    return r0, out
