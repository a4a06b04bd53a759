"""romsim.kernels: GGUF blocks, quantized GEMV/GEMM (float and bit-exact integer paths), vector ops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numerics import assert_dot_close
from romsim.kernels import bitpack as bp
from romsim.kernels import ops
from romsim.kernels.qmatmul import (
    QTensor,
    combine_int,
    dequantize,
    int_group_dots,
    qmatmul,
    quantize_act_bfp,
)

torch = pytest.importorskip("torch")

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
shapes = st.tuples(st.integers(1, 70), st.integers(1, 300))
groups = st.sampled_from([8, 16, 32, 64, 128, 256])


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _random_gguf(rng, kind, n, k):
    """Random valid GGUF blocks (raw bytes) for an [n, k] tensor."""
    nb = n * k // 32
    d = (rng.random(nb) * 0.02 + 1e-3).astype(np.float16).view(np.uint8).reshape(nb, 2)
    if kind == "q8_0":
        qs = rng.integers(-128, 128, (nb, 32), dtype=np.int8).view(np.uint8)
        return np.concatenate([d, qs], 1).reshape(-1)
    qs = rng.integers(0, 256, (nb, 16), dtype=np.uint8)
    if kind == "q4_0":
        return np.concatenate([d, qs], 1).reshape(-1)
    m = (-rng.random(nb) * 0.1).astype(np.float16).view(np.uint8).reshape(nb, 2)
    return np.concatenate([d, m, qs], 1).reshape(-1)


def _abs_terms(qt) -> np.ndarray:
    """Per weight, a bound on the magnitudes the float kernels add up: they compute
    ``s * sum(q x) + c * sum(x)`` per group (``c = -s z`` or the Q4_1 minimum), so the rounding
    error scales with ``|s q| + |c| <= |w| + 2 |c|``, not with ``|w|`` (which can cancel)."""
    s = qt.scale.astype(np.float32)
    c = qt.minimum.astype(np.float32) if qt.has_min else -s * qt.zero.astype(np.float32)
    c_full = np.repeat(np.abs(c), qt.group_size, axis=1)[:, : qt.k]
    return np.abs(dequantize(qt)) + 2 * c_full


# ---- packing ------------------------------------------------------------------------------------


# (code and metadata packing round trips: tests/test_rom_layout.py)


@pytest.mark.parametrize("kind", ["q4_0", "q4_1", "q8_0"])
def test_gguf_blocks_bit_exact_roundtrip(kind):
    rng = np.random.default_rng(1)
    raw = _random_gguf(rng, kind, 7, 96)
    qt = QTensor.from_gguf(raw, kind, 7, 96)
    assert np.array_equal(bp.words_to_gguf_blocks(qt.words, qt.meta, kind, 7, 96), raw)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gg_deq

    ref = gg_deq(raw.reshape(7, -1), GGMLQuantizationType[kind.upper()]).reshape(7, 96)
    assert np.array_equal(dequantize(qt), ref.astype(np.float32))


# ---- quantized matmul ---------------------------------------------------------------------------


def _torch_ref(w_deq, x):
    return (torch.from_numpy(x).double() @ torch.from_numpy(w_deq).double().T).numpy()


@SETTINGS
@given(
    shape=shapes,
    m=st.integers(1, 5),
    bits=st.sampled_from([2, 3, 4, 8]),
    g=groups,
    seed=st.integers(0, 2**31),
)
def test_qmatmul_affine_vs_torch(shape, m, bits, g, seed):
    n, k = shape
    rng = np.random.default_rng(seed)
    qt = QTensor.quantize(_rand(rng, n, k), bits, g)
    codes, s, z = bp.quantize_affine(_rand(np.random.default_rng(seed), n, k), bits, g)
    wq = bp.dequantize_affine(codes, s, z, g)
    assert np.array_equal(dequantize(qt), wq)
    x = _rand(rng, m, k)
    ref = _torch_ref(wq, x)
    yf = qmatmul(qt, x, "float")
    tol = 1e-4 * (np.abs(x) @ np.abs(wq).T) + 1e-5
    assert np.all(np.abs(yf - ref) <= tol)
    # int path: error bounded by the activation quantization (|m*2^e - x| <= 2^e / 2)
    yi = qmatmul(qt, x, "int")
    kp = qt.k_padded
    xp = np.zeros((m, kp), np.float32)
    xp[:, :k] = x
    a, e = quantize_act_bfp(xp, g)
    step = np.repeat(np.ldexp(1.0, e), g, axis=1)[:, :k] / 2
    bound = step @ np.abs(wq).T + 1e-4 * (np.abs(x) @ np.abs(wq).T) + 1e-5
    assert np.all(np.abs(yi - ref) <= bound)


@SETTINGS
@given(
    shape=shapes,
    m=st.integers(1, 4),
    bits=st.sampled_from([2, 3, 4, 8]),
    g=groups,
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(["affine", "symmetric"]),
)
def test_int_path_bit_exact_vs_golden(shape, m, bits, g, seed, kind):
    n, k = shape
    rng = np.random.default_rng(seed)
    codes, s, z = bp.quantize_affine(_rand(rng, n, k), bits, g)
    qt = QTensor.from_affine(codes, s, z, bits, g, kind=kind)
    x = _rand(rng, m, k) * np.float32(10 ** rng.uniform(-3, 3))
    xp = np.zeros((m, qt.k_padded), np.float32)
    xp[:, :k] = x
    a, e = quantize_act_bfp(xp, g)
    D, S = int_group_dots(qt, a)
    assert D.dtype == np.int32 and S.dtype == np.int32
    golden = combine_int(qt, D, S, e)
    assert np.array_equal(qmatmul(qt, x, "int"), golden)


@pytest.mark.parametrize("kind", ["q4_0", "q4_1", "q8_0"])
@pytest.mark.parametrize("m", [1, 3])
def test_gguf_qmatmul_paths(kind, m):
    rng = np.random.default_rng(7)
    n, k = 45, 160
    qt = QTensor.from_gguf(_random_gguf(rng, kind, n, k), kind, n, k)
    w = dequantize(qt)
    x = _rand(rng, m, k)
    ref = _torch_ref(w, x)
    assert_dot_close(qmatmul(qt, x, "float"), ref, np.abs(x) @ _abs_terms(qt).T, k, extra_ops=k)
    a, e = quantize_act_bfp(x, 32)
    D, S = int_group_dots(qt, a)
    assert np.array_equal(qmatmul(qt, x, "int"), combine_int(qt, D, S, e))
    # pure-integer D against an independent computation from the GGUF codes
    codes = qt.codes().astype(np.int64)
    d_ref = np.einsum(
        "ngi,mgi->mng", codes.reshape(n, k // 32, 32), a.astype(np.int64).reshape(m, k // 32, 32)
    )
    assert np.array_equal(D, d_ref)


@SETTINGS
@given(
    m=st.integers(1, 4),
    k_groups=st.integers(1, 8),
    g=groups,
    seed=st.integers(0, 2**31),
    scale=st.floats(-30, 30),
)
def test_bfp_activation_quantizer(m, k_groups, g, seed, scale):
    rng = np.random.default_rng(seed)
    x = (_rand(rng, m, k_groups * g) * np.float32(2.0**scale)).astype(np.float32)
    x[0, :g] = 0.0  # an all-zero group
    a, e = quantize_act_bfp(x, g)
    xg = x.astype(np.float64).reshape(m, k_groups, g)
    amax = np.abs(xg).max(axis=2)
    # independent: smallest e with amax * 2^-e < 127.5
    e_ref = np.zeros_like(e)
    nz = amax > 0
    e_ref[nz] = np.ceil(np.log2(amax[nz] / 127.5)).astype(np.int32)
    e_ref[nz] += (amax[nz] * np.ldexp(1.0, -e_ref[nz]) >= 127.5).astype(np.int32)
    while np.any(fix := nz & (amax * np.ldexp(1.0, -(e_ref - 1)) < 127.5)):
        e_ref[fix] -= 1
    assert np.array_equal(e, e_ref)
    m_ref = np.rint(xg * np.ldexp(1.0, -e_ref)[:, :, None]).reshape(m, -1)
    assert np.array_equal(a.astype(np.int64), m_ref.astype(np.int64))
    assert np.abs(a).max() <= 127


def test_bfp_round_half_to_even():
    x = np.array([[2.5, -3.5, 0.5, 127.0] + [0.0] * 4], np.float32)
    a, e = quantize_act_bfp(x, 8)
    assert e[0, 0] == 0 and a[0, :4].tolist() == [2, -4, 0, 127]


def test_int32_accumulator_bound_worst_case():
    # the proof in docs/kernels.md: |D|, |D - z*S| <= 256 * 255 * 127 < 2**23 for g<=256, b<=8
    g, bits = 256, 8
    codes = np.full((1, g), 255, np.uint8)
    qt = QTensor.from_affine(
        codes, np.ones((1, 1), np.float16), np.zeros((1, 1), np.uint8), bits, g
    )
    a = np.full((1, g), 127, np.int8)
    D, S = int_group_dots(qt, a)
    assert D[0, 0, 0] == 256 * 255 * 127 < 2**23


# ---- vector ops ---------------------------------------------------------------------------------


def test_rmsnorm_silu_softmax_vs_torch():
    rng = np.random.default_rng(3)
    x, w = _rand(rng, 5, 96), _rand(rng, 96)
    ref = torch.nn.functional.rms_norm(torch.from_numpy(x), (96,), torch.from_numpy(w), 1e-5)
    assert np.allclose(ops.rmsnorm(x, w, 1e-5), ref.numpy(), rtol=1e-5, atol=1e-5)
    g, u = _rand(rng, 3, 70), _rand(rng, 3, 70)
    ref = torch.nn.functional.silu(torch.from_numpy(g)) * torch.from_numpy(u)
    assert np.allclose(ops.silu_mul(g, u), ref.numpy(), rtol=1e-5, atol=1e-6)
    s = _rand(rng, 4, 33) * 10
    assert np.allclose(ops.softmax(s), torch.softmax(torch.from_numpy(s), -1).numpy(), atol=1e-6)


def test_rope_interleaved_matches_complex_rotation():
    rng = np.random.default_rng(4)
    x = _rand(rng, 3, 2, 8)
    cos, sin = ops.rope_tables(8, 16, 10000.0)
    pos = np.array([0, 5, 15])
    y = x.copy()
    ops.rope_interleaved(y, pos, cos, sin)
    z = x[..., 0::2] + 1j * x[..., 1::2]
    ang = pos[:, None, None] * 10000.0 ** (-np.arange(0, 8, 2) / 8)
    zr = z * np.exp(1j * ang)
    assert np.allclose(y[..., 0::2], zr.real, atol=1e-5)
    assert np.allclose(y[..., 1::2], zr.imag, atol=1e-5)


@pytest.mark.parametrize("m,pos0,hq,hkv", [(1, 0, 4, 2), (1, 9, 9, 3), (6, 0, 4, 4), (3, 5, 6, 2)])
def test_gqa_attention_vs_torch(m, pos0, hq, hkv):
    rng = np.random.default_rng(5)
    hd, t = 16, pos0 + m
    q, kc, vc = _rand(rng, m, hq, hd), _rand(rng, hkv, t, hd), _rand(rng, hkv, t, hd)
    out = ops.gqa_attention(q, kc, vc, pos0)
    rep = hq // hkv
    tq = torch.from_numpy(q).permute(1, 0, 2)[None]
    tk = torch.from_numpy(kc).repeat_interleave(rep, 0)[None]
    tv = torch.from_numpy(vc).repeat_interleave(rep, 0)[None]
    mask = torch.arange(t)[None, :] <= (pos0 + torch.arange(m))[:, None]
    ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
    assert np.allclose(out, ref[0].permute(1, 0, 2).numpy(), atol=1e-5)


def test_lora_and_sampling():
    rng = np.random.default_rng(6)
    x, a, b = _rand(rng, 2, 40), _rand(rng, 4, 40), _rand(rng, 30, 4)
    ref = x @ a.T @ b.T * (8 / 4)
    abs_sum = np.abs(x) @ np.abs(a).T @ np.abs(b).T * (8 / 4)  # bounds both sums' error terms
    assert_dot_close(ops.lora_delta(x, a, b, 8.0, 4), ref, abs_sum, 40 + 4)
    v = np.array([0.1, 3.0, 3.0, -1.0, 2.0], np.float32)
    assert ops.argmax(v) == 1 and list(ops.top_k(v, 3)) == [1, 2, 4]
    assert ops.sample_top_k(v, 1, 1.0, 0.9) == 1
    picks = {ops.sample_top_k(v, 3, 1.0, u) for u in np.linspace(0, 0.999, 50)}
    assert picks == {1, 2, 4}


@pytest.mark.parametrize("g", [8, 16, 32, 128])
@pytest.mark.parametrize("kind", ["affine", "q4_0", "q4_1", "q8_0"])
def test_gemv_fast_path_equals_gemm_path(g, kind):
    """M = 1 uses fused 4-bit and Q8_0 GEMV kernels; they must equal the GEMM kernels (int: bit-exact)."""
    rng = np.random.default_rng(g)
    n, k = 13, (96 if kind != "affine" else 9 * g + 5)
    if kind == "affine":
        qt = QTensor.quantize(_rand(rng, n, k), 4, g)
    else:
        qt = QTensor.from_gguf(_random_gguf(rng, kind, n, k), kind, n, k)
    x = _rand(rng, 2, k)
    both_i = qmatmul(qt, np.vstack([x[:1], x[:1]]), "int")
    both_f = qmatmul(qt, np.vstack([x[:1], x[:1]]), "float")
    assert np.array_equal(qmatmul(qt, x[0], "int"), both_i[0])
    abs_sum = _abs_terms(qt) @ np.abs(x[0])
    assert_dot_close(qmatmul(qt, x[0], "float"), both_f[0], abs_sum, k, extra_ops=k)


@pytest.mark.parametrize(
    "kind,bits,g",
    [
        ("affine", 4, 64),
        ("affine", 3, 32),
        ("affine", 2, 128),
        ("affine", 8, 16),
        ("q4_0", 4, 32),
        ("q4_1", 4, 32),
        ("q8_0", 8, 32),
    ],
)
def test_large_m_blas_path_bit_exact(kind, bits, g):
    """M >= BLAS_MIN_M runs the dots in fp32 BLAS; integer D stays exact, so the int path
    still equals the golden model bit for bit."""
    from romsim.kernels.qmatmul import BLAS_MIN_M

    rng = np.random.default_rng(bits * g)
    n, k = 37, 160
    if kind == "affine":
        qt = QTensor.quantize(_rand(rng, n, k + 3), bits, g)
        k = k + 3
    else:
        qt = QTensor.from_gguf(_random_gguf(rng, kind, n, k), kind, n, k)
    m = BLAS_MIN_M + 3
    x = _rand(rng, m, k) * np.float32(50.0)
    xp = np.zeros((m, qt.k_padded), np.float32)
    xp[:, :k] = x
    a, e = quantize_act_bfp(xp, qt.group_size)
    D, S = int_group_dots(qt, a)
    assert np.array_equal(qmatmul(qt, x, "int"), combine_int(qt, D, S, e))
    ref = _torch_ref(dequantize(qt), x)
    tol = 1e-4 * (np.abs(x) @ np.abs(dequantize(qt)).T) + 1e-4
    assert np.all(np.abs(qmatmul(qt, x, "float") - ref) <= tol)
