"""kernels/dequant_ref.py: the per-group fp32 partials are the kernel's own (their left-to-right
sum is combine_int and the qmatmul int path, bit for bit), and the row-block order differs
from the kernel's only on rows split over two cells, by reassociation."""

from __future__ import annotations

import numpy as np
import pytest
from romsim.kernels.dequant_ref import dequant_f32, group_partials, rowblock_sums
from romsim.kernels.qmatmul import (
    QTensor,
    _pow2_f32,
    combine_int,
    int_group_dots,
    qmatmul,
    quantize_act_bfp,
)


def _case(bits, m, seed=0, n=12, ng=5):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, ng * 128)) * 0.02).astype(np.float32)
    qt = QTensor.quantize(w, bits, 128)
    x = rng.standard_t(3, size=(m, ng * 128)).astype(np.float32)
    a, e = quantize_act_bfp(x, 128)
    return qt, a, e


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 3])
def test_group_partials_sum_is_the_kernel(bits, m):
    qt, a, e = _case(bits, m, seed=bits)
    e[0, 1] = -140  # subnormal partials
    ng = qt.n_groups
    _, p = group_partials(qt, a, e, 0, qt.n * ng)
    acc = np.zeros((m, qt.n), np.float32)
    for g in range(ng):
        acc = acc + p.reshape(m, qt.n, ng)[:, :, g]
    d, s = int_group_dots(qt, a)
    assert np.array_equal(acc.view(np.uint32), combine_int(qt, d, s, e).view(np.uint32))
    ss = a.reshape(m, ng, 128).sum(axis=2, dtype=np.int32)
    y = qmatmul(qt, np.zeros((m, qt.k), np.float32), path="int", act=(a, ss, _pow2_f32(e)))
    assert np.array_equal(acc.view(np.uint32), y.reshape(m, -1).view(np.uint32))


def test_dequant_f32_edges():
    t = np.array([0, -1, 3, 1 << 23, -(1 << 23)])
    s = np.array([1.0, 0.5, 2.0**-24, 65504.0, -0.0], np.float16)
    e = np.array([0, -160, -126, 121, 0])
    got = dequant_f32(t, s, e)
    assert got.view(np.uint32)[0] == 0  # +0
    assert got.view(np.uint32)[1] == 0x80000000  # -0: 2**-160 is 0 in fp32
    assert got[2] == np.float32(2.0**-148)  # 1.5 * 2**-149: a tie, to even
    assert np.isinf(got[3]) and got[4] == 0


def test_rowblock_sums_order():
    qt, a, e = _case(4, 2, seed=9, n=10, ng=5)
    d, s = int_group_dots(qt, a)
    ker = combine_int(qt, d, s, e)
    runs = [(3, 11), (11, 17), (17, 31), (31, 40)]  # rows split at 5, 10 (not at 15), 30
    r0, got = rowblock_sums(qt, a, e, runs)
    assert r0 == 0
    _, p = group_partials(qt, a, e, 0, 40)
    mag = np.abs(p.astype(np.float64)).reshape(2, -1, 5).sum(axis=2)
    for r in range(8):
        g0, g1 = 5 * r, 5 * r + 5
        held = [(lo, hi) for lo, hi in runs if lo < g1 and g0 < hi]
        if len(held) == 1 and held[0][0] <= g0 and g1 <= held[0][1]:
            assert np.array_equal(got[:, r].view(np.uint32), ker[:, r].view(np.uint32))
        elif runs[0][0] <= g0:
            err = np.abs(got[:, r].astype(np.float64) - ker[:, r])
            assert np.all(err <= 4 * np.finfo(np.float32).eps * mag[:, r])
    with pytest.raises(ValueError):
        rowblock_sums(qt, a, e, [(0, 3), (3, 4), (4, 9)])  # row 0 over three cells
