"""romsim.kernels.codebook: the NF4 / ternary integer path (the RTL cell's golden model) and its
float path.

``pytest tests -k "nf4 or ternary"``."""

from __future__ import annotations

import numpy as np
import pytest
from numerics import assert_dot_close
from romsim.kernels.codebook import (
    BASE3_LUT,
    NF4_FIXED_TABLE,
    NF4_FLOAT_TABLE,
    CodebookTensor,
    codebook_group_dots,
    codebook_partials,
    codebook_qmatmul,
    combine_codebook,
    pack_codes,
    quantize_act_codebook,
    unpack_codes,
)
from romsim.kernels.dequant_ref import dequant_f32
from romsim.kernels.qmatmul import QTensor, dequantize, qmatmul
from romsim.rtl.params import nf4_fixed_table

FORMATS = [("nf4", "bits"), ("ternary", "bits"), ("ternary", "base3")]
IDS = ["nf4", "ternary", "ternary_b3"]


def _data(kind: str, packing: str, n: int = 9, k: int = 333, m: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(4, size=(n, k)) * 0.05).astype(np.float32)
    x = rng.standard_t(3, size=(m, k)).astype(np.float32)
    ct = CodebookTensor.quantize(w, kind, packing)
    a, e = quantize_act_codebook(ct, x)
    return ct, x, np.asarray(a, np.int64), np.asarray(e, np.int64)


def _old_golden(ct: CodebookTensor, a, e, start: int, stop: int):
    """A copy of the former sim/codebook_ref.golden arithmetic (the RTL's previous reference)."""
    g = ct.group_size
    gidx = np.arange(start, stop)
    rows, kgs = gidx // ct.ng, gidx % ct.ng
    if ct.kind == "nf4":
        vals = np.array(nf4_fixed_table(), np.int64)[ct.codes]
    else:
        vals = ct.codes.astype(np.int64) - 1
    vals = vals.reshape(ct.n, ct.ng, g)[rows, kgs]
    ag = np.asarray(a, np.int64).reshape(a.shape[0], ct.ng, g)[:, kgs]
    t = (ag * vals[None]).sum(axis=2)
    ee = np.asarray(e, np.int64)[:, kgs]
    if ct.kind == "nf4":
        s = ct.scale.reshape(-1)[gidx]
        ee = ee - 10
    else:
        s = np.full(len(gidx), ct.scale.reshape(-1)[0], np.float16)
    return t, np.asarray(dequant_f32(t, s[None, :], ee), np.float32)


@pytest.mark.parametrize(("kind", "packing"), FORMATS, ids=IDS)
def test_nf4_ternary_int_path_equals_previous_golden(kind, packing):
    """T and the fp32 partials (bits) of every run equal the former RTL golden model's."""
    for seed in range(3):
        ct, _, a, e = _data(kind, packing, seed=seed)
        tot = ct.n * ct.ng
        for s0, s1 in [(0, tot), (1, tot - 2), (tot // 3, tot // 2 + 1), (5, 6)]:
            t, p = codebook_partials(ct, a, e, s0, s1)
            t0, p0 = _old_golden(ct, a, e, s0, s1)
            assert np.array_equal(t, t0)
            assert np.array_equal(p.view(np.uint32), p0.view(np.uint32))
        T = codebook_group_dots(ct, a)
        assert np.array_equal(T.reshape(len(a), -1), codebook_partials(ct, a, e, 0, tot)[0])


def test_nf4_fixed_table_within_2pow_minus11():
    tab = NF4_FIXED_TABLE / 1024.0
    assert np.abs(tab - NF4_FLOAT_TABLE.astype(np.float64)).max() <= 2**-11
    assert tuple(NF4_FIXED_TABLE) == nf4_fixed_table()
    assert (NF4_FIXED_TABLE[[0, 7, 15]] == [-1024, 0, 1024]).all()


@pytest.mark.parametrize(("kind", "packing"), FORMATS, ids=IDS)
def test_nf4_ternary_combine_is_ordered_sum_of_partials(kind, packing):
    """combine_codebook = ((0 + p_0) + p_1) + ... of the cell partials, row by row."""
    ct, x, a, e = _data(kind, packing, seed=4)
    y = combine_codebook(ct, codebook_group_dots(ct, a), e)
    _, p = codebook_partials(ct, a, e, 0, ct.n * ct.ng)
    p = p.reshape(len(a), ct.n, ct.ng)
    acc = np.zeros((len(a), ct.n), np.float32)
    for g in range(ct.ng):
        acc = acc + p[:, :, g]
    assert np.array_equal(y.view(np.uint32), acc.view(np.uint32))
    assert np.array_equal(codebook_qmatmul(ct, x, "int"), y)
    assert np.array_equal(codebook_qmatmul(ct, x[0], "int"), y[0])


@pytest.mark.parametrize(("kind", "packing"), FORMATS, ids=IDS)
def test_nf4_ternary_qmatmul_int_vs_float(kind, packing):
    """int path vs a float64 reference of the same operands (fixed-point codebook, BFP
    activations): fp32 accumulation bound only. float path vs ``x @ dequantize().T``: the
    accumulation bound. int vs float path: that plus the codebook (<= 2**-11 s per weight) and
    the BFP rounding (<= 2**(e-1) per activation)."""
    ct, x, a, e = _data(kind, packing, seed=2)
    g = ct.group_size
    xq = (a.reshape(len(a), ct.ng, g) * np.ldexp(1.0, e)[..., None]).reshape(len(a), -1)
    s = np.repeat(ct.group_scales().astype(np.float64), g, axis=1)
    frac = 1024.0 if kind == "nf4" else 1.0
    wfix = ct.values() / frac * s  # [n, Kp]
    y_int = codebook_qmatmul(ct, x, "int")
    assert_dot_close(y_int, xq @ wfix.T, np.abs(xq) @ np.abs(wfix).T, ct.ng, extra_ops=2)

    wf = ct.dequantize().astype(np.float64)
    y_f = codebook_qmatmul(ct, x, "float")
    x64 = x.astype(np.float64)
    assert_dot_close(y_f, x64 @ wf.T, np.abs(x64) @ np.abs(wf).T, ct.k)

    book = 2.0**-11 * np.abs(x64) @ s[:, : ct.k].T if kind == "nf4" else 0.0
    bfp = np.repeat(np.ldexp(0.5, e), g, axis=1)[:, : ct.k] @ np.abs(wf).T
    acc = 2 * 1.2e-7 * ct.k * (np.abs(x64) @ np.abs(wf).T + np.abs(xq[:, : ct.k]) @ np.abs(wf).T)
    err = np.abs(y_int.astype(np.float64) - y_f)
    assert (err <= book + bfp * 1.001 + acc + 1e-30).all(), err.max()


@pytest.mark.parametrize(("kind", "packing"), FORMATS, ids=IDS)
def test_nf4_ternary_pack_unpack_roundtrip(kind, packing):
    ct, *_ = _data(kind, packing, seed=5)
    by = pack_codes(ct)
    gb = {"nf4": 32, "ternary": 32}[kind]
    assert by.shape == (ct.n * ct.ng, gb)
    assert np.array_equal(
        unpack_codes(by, kind, packing, ct.group_size).reshape(ct.n, -1), ct.codes
    )
    back = CodebookTensor.from_packed(kind, packing, ct.n, ct.k, by, ct.scale)
    assert np.array_equal(back.codes, ct.codes) and back.group_size == ct.group_size
    if packing == "base3":
        d = ct.codes.reshape(-1, 5).astype(np.int64)
        assert np.array_equal(by.reshape(-1), d @ [1, 3, 9, 27, 81])
    else:
        b = 4 if kind == "nf4" else 2
        c = ct.codes.reshape(-1, 8 // b).astype(np.int64)
        assert np.array_equal(by.reshape(-1), (c << (np.arange(8 // b) * b)).sum(axis=1))


def test_ternary_base3_lut_and_padding():
    """The LUT decodes every written byte; 243..255 (never written) give digits 1 (trit 0), as
    the cell; padding weights are the zero code and pad activations are 0."""
    v = np.arange(243)
    assert np.array_equal(BASE3_LUT[v].astype(np.int64) @ [1, 3, 9, 27, 81], v)
    assert (BASE3_LUT[243:] == 1).all()
    ct, *_ = _data("ternary", "base3", k=333)
    assert (ct.codes[:, 333:] == 1).all() and (ct.values()[:, 333:] == 0).all()
    nf, *_ = _data("nf4", "bits", k=333)
    assert (nf.codes[:, 333:] == 7).all() and (nf.values()[:, 333:] == 0).all()


def test_nf4_from_qtensor_float_path_is_bitsandbytes():
    """A bitsandbytes NF4 QTensor (fp32 absmax): the float path's weights are the kernels'
    dequantize bit for bit and its product matches qmatmul(path="float"); the int path uses the
    fixed-point table with the fp32 absmax."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((12, 256)) * 0.02).astype(np.float32)
    qt = QTensor.quantize_nf4(w)
    ct = CodebookTensor.from_qtensor(qt)
    assert ct.scale.dtype == np.float32
    assert np.array_equal(ct.dequantize().view(np.uint32), dequantize(qt).view(np.uint32))
    x = rng.standard_normal((3, 256)).astype(np.float32)
    wf = ct.dequantize().astype(np.float64)
    aa = np.abs(x.astype(np.float64)) @ np.abs(wf).T
    assert_dot_close(codebook_qmatmul(ct, x), qmatmul(qt, x, path="float"), aa, 256)
    a, e = quantize_act_codebook(ct, x)
    t, p = codebook_partials(ct, a, e, 0, ct.n * ct.ng)
    s = ct.scale.reshape(-1)
    want = (t.astype(np.float32) * s[None]) * np.ldexp(np.float32(1), np.tile(e, ct.n) - 10)
    assert np.array_equal(p.view(np.uint32), want.astype(np.float32).view(np.uint32))
    with pytest.raises(ValueError, match="nf4 has no integer path"):
        qmatmul(qt, x, path="int")
