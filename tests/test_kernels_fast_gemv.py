"""Row-interleaved int16-lane GEMVs (``qmatmul`` with M = 1 on the int path, Q4_0 / Q4_1 / Q8_0,
``n % RC == 0``): bit-identical to the per-row kernels ``_qmv_q4_int`` / ``_qmv_q8_int`` they
replace there and to the golden ``combine_int(int_group_dots(...))``; where they do not apply
(``n % RC != 0``, int16 mantissas, an int8 -128 for Q8_0) ``qmatmul`` falls back to the per-row
kernels, and the row-interleaved copy is only built where it is used."""

from __future__ import annotations

import numpy as np
import pytest
from functional_fixtures import smollm2_gguf  # noqa: F401  (session fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from romsim.kernels import qmatmul as qm
from romsim.kernels.qmatmul import (
    BLAS_MIN_M,
    RC,
    QTensor,
    combine_int,
    int_group_dots,
    qmatmul,
    quantize_act,
    quantize_act_bfp,
)

KINDS = ("q4_0", "q4_1", "q8_0")


def _raw_blocks(rng, kind, n, k, code_fill=None):
    """Random GGUF blocks (raw bytes) for ``[n, k]``: fp16 ``d`` over six decades (both signs),
    Q4_1 ``m`` of both signs, every code value possible (Q8_0 includes -128). ``code_fill``
    sets every code byte to one value (worst-case codes)."""
    nb = n * k // 32
    d = (rng.choice([-1, 1], nb) * 10 ** rng.uniform(-4, 2, nb)).astype(np.float16)
    d = d.view(np.uint8).reshape(nb, 2)
    qb = 32 if kind == "q8_0" else 16
    if code_fill is None:
        qs = rng.integers(0, 256, (nb, qb), dtype=np.uint8)
    else:
        qs = np.full((nb, qb), code_fill, np.uint8)
    if kind != "q4_1":
        return np.concatenate([d, qs], 1).reshape(-1)
    m = (rng.standard_normal(nb) * 0.1).astype(np.float16).view(np.uint8).reshape(nb, 2)
    return np.concatenate([d, m, qs], 1).reshape(-1)


def _qtensor(rng, kind, n, k, code_fill=None):
    return QTensor.from_gguf(_raw_blocks(rng, kind, n, k, code_fill), kind, n, k)


def _per_row(qt, act):
    """The per-row M = 1 kernels (the path qmatmul took before the int16-lane GEMVs)."""
    a, s, p2 = act
    out = np.empty(qt.n, np.float32)
    if qt.kind == "q8_0":
        qm._qmv_q8_int(qt.code_bytes().view(np.int8), 32, qt.scale, a[0], p2[0], out)
    else:
        args = qm._meta_args(qt)[5:9]
        qm._qmv_q4_int(qt.code_bytes(), 16, *args, a[0], s[0], p2[0], out)
    return out


def _golden(qt, a, e):
    D, S = int_group_dots(qt, a)
    return combine_int(qt, D, S, e)[0]


def _same_bits(u, v):
    u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)
    return u.shape == v.shape and np.array_equal(u.view(np.uint32), v.view(np.uint32))


def _act_from(a: np.ndarray, e: np.ndarray):
    """A caller-made ``quantize_act`` operand from mantissas ``a[1, K]`` and exponents."""
    s = a.reshape(1, -1, 32).sum(axis=2, dtype=np.int32)
    return a, s, qm._pow2_f32(e)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    kind=st.sampled_from(KINDS),
    blocks=st.integers(1, 3),
    extra=st.sampled_from([0, 0, 1, 7, 31]),
    ng=st.integers(1, 12),
    act_bits=st.integers(4, 8),
    log_scale=st.floats(-3, 3),
    zero_groups=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_q4_q8_gemv_bit_identical_random(
    kind, blocks, extra, ng, act_bits, log_scale, zero_groups, seed
):
    """Random Q4_0/Q4_1/Q8_0 tensors, n a multiple of RC (int16-lane kernels) or not (per-row
    fallback), K = 32..384, act_bits 4..8, activations over 1e-3..1e3, some all-zero groups."""
    rng = np.random.default_rng(seed)
    n, k = blocks * RC + extra, 32 * ng
    qt = _qtensor(rng, kind, n, k)
    x = (rng.standard_normal(k) * 10**log_scale).astype(np.float32)
    if zero_groups:
        x.reshape(ng, 32)[rng.random(ng) < 0.4] = 0
    y = qmatmul(qt, x, "int", act_bits)
    assert (qt.gemv_pack_bytes > 0) == (extra == 0)
    act = quantize_act(x, k, 32, act_bits)
    assert _same_bits(y, _per_row(qt, act))
    a, e = quantize_act_bfp(x.reshape(1, -1), 32, act_bits)
    assert _same_bits(y, _golden(qt, a, e))
    assert _same_bits(qmatmul(qt, x, "int", act_bits, act=act), y)  # shared activation operand


@pytest.mark.parametrize("kind", KINDS)
def test_q4_q8_gemv_gguf_quantizer_tensors(kind):
    """Tensors from gguf-py's own quantizer (llama.cpp's algorithm), SmolLM2-like shapes."""
    gguf = pytest.importorskip("gguf")
    qtype = getattr(gguf.GGMLQuantizationType, kind.upper())
    rng = np.random.default_rng(7)
    for n, k in ((192, 576), (1536, 576), (576, 1536)):
        w = rng.standard_normal((n, k)).astype(np.float32)
        raw = np.asarray(gguf.quants.quantize(w, qtype)).reshape(-1)
        qt = QTensor.from_gguf(raw, kind, n, k)
        for scale in (1e-3, 1.0, 1e3):
            x = (rng.standard_normal(k) * scale).astype(np.float32)
            y = qmatmul(qt, x, "int")
            assert qt.gemv_pack_bytes > 0
            assert _same_bits(y, _per_row(qt, quantize_act(x, k, 32)))


@pytest.mark.parametrize("kind", KINDS)
def test_q4_q8_gemv_zero_and_extreme_activations(kind):
    """All-zero input; |m| = 127 everywhere against the largest codes (Q4: every nibble 15, a
    half-group dot of 16*15*127; Q8_0: codes -128 and 127, pairs up to 2*128*127); alternating
    signs; one huge outlier among tiny values."""
    rng = np.random.default_rng(3)
    n, k = 2 * RC, 256
    fills = (0xFF, 0x00, 0x80) if kind != "q8_0" else (0x80, 0x7F, 0x81)
    xs = [
        np.zeros(k, np.float32),
        np.full(k, 127.0, np.float32),
        np.full(k, -127.0, np.float32),
        np.where(np.arange(k) % 2 == 0, 127.0, -127.0).astype(np.float32),
        np.where(np.arange(k) == 5, 3e4, 1e-3).astype(np.float32),
    ]
    for fill in (*fills, None):
        qt = _qtensor(rng, kind, n, k, code_fill=fill)
        for x in xs:
            for act_bits in (4, 8):
                y = qmatmul(qt, x, "int", act_bits)
                a, e = quantize_act_bfp(x.reshape(1, -1), 32, act_bits)
                assert np.abs(a).max() <= 2 ** (act_bits - 1) - 1
                assert _same_bits(y, _per_row(qt, quantize_act(x, k, 32, act_bits)))
                assert _same_bits(y, _golden(qt, a, e))
        assert qt.gemv_pack_bytes > 0


@pytest.mark.parametrize("kind", KINDS)
def test_q4_q8_gemv_caller_mantissas_minus_128(kind):
    """A caller's int8 operand holding -128 (the quantizer never writes it): Q4's int16 lanes
    stay exact (16*15*128 = 30,720 < 2**15); Q8_0 falls back to the per-row kernel (a pair
    could reach 2**15). Both equal the golden model."""
    rng = np.random.default_rng(11)
    n, k = RC, 128
    qt = _qtensor(rng, kind, n, k, code_fill=0x80 if kind == "q8_0" else 0xFF)
    for vals in ([-128], [-128, 127], [-128, -127, 0, 127]):
        a = rng.choice(np.array(vals, np.int8), (1, k))
        e = rng.integers(-10, 10, (1, k // 32)).astype(np.int32)
        act = _act_from(a, e)
        y = qmatmul(qt, np.zeros(k, np.float32), "int", act=act)
        assert _same_bits(y, _golden(qt, a, e))
        assert _same_bits(y, _per_row(qt, act))
    assert (qt.gemv_pack_bytes > 0) == (kind != "q8_0")


def test_q4_q8_gemv_pack_only_where_used(monkeypatch):
    """The row-interleaved copy is built by the M = 1 int path only: not by the float path, M = 2,
    the large-M BLAS path, int16 mantissas (act_bits > 8) or with INT16_GEMV off; it is cached,
    rebuilt when ``words`` is replaced, and dropped on request."""
    rng = np.random.default_rng(5)
    n, k = 3 * RC, 96
    for kind in KINDS:
        qt = _qtensor(rng, kind, n, k)
        x = rng.standard_normal((BLAS_MIN_M, k)).astype(np.float32)
        qmatmul(qt, x, "int")
        qmatmul(qt, x[:2], "int")
        qmatmul(qt, x[0], "float")
        qmatmul(qt, x[0], "int", act=quantize_act(x[0], k, 32, act_bits=10))
        with monkeypatch.context() as mp:
            mp.setattr(qm, "INT16_GEMV", False)
            y_off = qmatmul(qt, x[0], "int")
        assert qt.gemv_pack_bytes == 0
        y = qmatmul(qt, x[0], "int")
        assert _same_bits(y, y_off)
        pack = qt.gemv_pack()
        # one more copy of the code bytes plus the transposed metadata it reads
        meta = 2 if kind == "q4_1" else 1
        assert qt.gemv_pack_bytes >= qt.words.nbytes + meta * qt.scale.nbytes
        assert qt.gemv_pack() is pack  # cached
        qt.words = qt.words.copy()
        assert qt.gemv_pack() is not pack  # replaced words: rebuilt
        qt.drop_gemv_pack()
        assert qt.gemv_pack_bytes == 0
        assert _same_bits(qmatmul(qt, x[0], "int"), y)
    assert _qtensor(rng, "q4_1", RC + 1, 64).gemv_pack() is None
    assert QTensor.quantize(rng.standard_normal((RC, 64)), 4, 32).gemv_pack() is None


SMOLLM2_MATRICES = (
    "blk.0.attn_q.weight",
    "blk.0.attn_k.weight",
    "blk.3.ffn_gate.weight",
    "blk.17.ffn_down.weight",
    "blk.29.attn_output.weight",
    "token_embd.weight",  # the tied Q8_0 lm_head, 49,152 rows
)


def test_q4_q8_gemv_smollm2_matrices(smollm2_gguf):  # noqa: F811
    """Real SmolLM2-135M matrices (Q4_1 decoder linears, the Q8_0 lm_head), activations at
    three scales: the int16-lane GEMVs equal the per-row kernels bit for bit."""
    rng = np.random.default_rng(2)
    for name in SMOLLM2_MATRICES:
        rt = smollm2_gguf.tensor(name)
        n, k = rt.shape
        qt = QTensor.from_gguf(rt.data, rt.ggml_type.lower(), n, k)
        for scale in (0.05, 1.0, 20.0):
            x = (rng.standard_normal(k) * scale).astype(np.float32)
            y = qmatmul(qt, x, "int")
            assert _same_bits(y, _per_row(qt, quantize_act(x, k, 32)))
        assert qt.gemv_pack_bytes > 0
        if n <= 1536:
            a, e = quantize_act_bfp(x.reshape(1, -1), 32)
            assert _same_bits(y, _golden(qt, a, e))
