"""llama.cpp Q5_0/Q5_1 and K-quants (Q2_K ... Q6_K) in ROM words, bit-exact against gguf-py.

The reference is ``gguf.quants.dequantize`` (the llama.cpp project's Python code). gguf-py
quantizes Q5_0/Q5_1 itself; K-quant tensors come from romsim.kernels.kquant (gguf-py cannot
quantize them), whose bytes gguf-py then dequantizes: the bytes, the ROM words and the kernels
are all checked against it.
"""

from __future__ import annotations

import numpy as np
import pytest
from numerics import assert_dot_close
from romsim.kernels import bitpack as bp
from romsim.kernels.kquant import quantize_kquant
from romsim.kernels.qmatmul import (
    QTensor,
    combine_int,
    dequantize,
    int_group_dots,
    qmatmul,
    quantize_act_bfp,
)

from romsim.quant import _GGUF_FIXED, named_format
from romsim.rom.image import RomImage
from romsim.rom.layout import RomLayout

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

KQUANTS = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
N, K = 6, 512  # two super-blocks a row


def _weights(seed: int, n: int = N, k: int = K) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[0, :40] = 0.0  # an all-zero sub-block / block
    w[1] += np.float32(0.7)  # all-positive rows (mins at 0)
    w[2] *= np.float32(1e-3)
    return w


def _raw(kind: str, w: np.ndarray) -> np.ndarray:
    if kind in KQUANTS:
        return quantize_kquant(w, kind)
    return np.asarray(gguf_quantize(w, GGMLQuantizationType[kind.upper()]), np.uint8).reshape(-1)


def _ref(kind: str, raw: np.ndarray, n: int, k: int) -> np.ndarray:
    out = gguf_dequantize(raw, GGMLQuantizationType[kind.upper()])
    return np.asarray(out, np.float32).reshape(n, k)


ALL = ("q5_0", "q5_1", *KQUANTS)


@pytest.mark.parametrize("kind", ALL)
def test_kquant_dequantize_bit_exact_vs_gguf_py(kind):
    w = _weights(1)
    raw = _raw(kind, w)
    assert raw.size == N * K // bp.GGUF_BLOCK_WEIGHTS[kind] * bp.GGUF_BLOCK_BYTES[kind]
    qt = QTensor.from_gguf(raw, kind, N, K)
    ref = _ref(kind, raw, N, K)
    got = dequantize(qt)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))  # same fp32 bits
    rows = np.array([5, 0, 3])
    assert np.array_equal(dequantize(qt, rows).view(np.uint32), ref[rows].view(np.uint32))
    # the quantizer is a real one: the weights come back close
    rel = np.sqrt(((ref - w) ** 2).sum() / (w**2).sum())
    assert rel < {"q2_k": 0.45, "q3_k": 0.3, "q5_0": 0.1, "q5_1": 0.1}.get(kind, 0.12), rel


@pytest.mark.parametrize("kind", ALL)
def test_kquant_rom_words_keep_llama_cpp_bytes(kind):
    w = _weights(2)
    raw = _raw(kind, w)
    qt = QTensor.from_gguf(raw, kind, N, K)
    assert np.array_equal(bp.words_to_gguf_blocks(qt.words, qt.meta, kind, N, K), raw)
    lay = qt.rom_layout
    blocks = N * K // lay.group_size
    assert qt.words.size == lay.code_words(blocks) and qt.meta.size == lay.meta_words(blocks)
    # rule 7/9: a block's code bytes, in block order, open its group's words
    cb = qt.code_bytes().reshape(blocks, lay.group_bytes)
    rb = raw.reshape(blocks, bp.GGUF_BLOCK_BYTES[kind])
    code_segs = [rb[:, o : o + ln] for _, o, ln, c in bp.GGUF_SEGMENTS[kind] if c == "code"]
    assert np.array_equal(cb[:, : bp.GGUF_QS_BYTES[kind]], np.concatenate(code_segs, axis=1))
    # numpy codes (the golden path) against the reference: w = s*(q - z) or s*q + min
    q = qt.codes().astype(np.float32).reshape(N, -1, qt.group_size)
    s = qt.scale[:, :, None]
    want = s * q + qt.minimum[:, :, None] if qt.has_min else s * (q - qt.zero[:, :, None])
    assert np.array_equal(want.reshape(N, K), _ref(kind, raw, N, K))


def test_kquant_bits_per_weight_and_layout():
    bpw = {"q2_k": 2.625, "q3_k": 3.4375, "q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.5625}
    bpw |= {"q5_0": 5.5, "q5_1": 6.0}
    for kind, want in bpw.items():
        f = named_format(kind)
        assert f.bits_per_weight == want
        lay = RomLayout.for_format(f)
        assert lay == bp.gguf_layout(kind)
        assert lay.meta_bits == 8 * bp.GGUF_META_BYTES[kind]
        assert lay.group_bits == 8 * bp.GGUF_QS_BYTES[kind]
        b, g, sb, zb = _GGUF_FIXED[kind]
        assert (b, g, sb, zb) == (bp.GGUF_BITS[kind], bp.GGUF_BLOCK_WEIGHTS[kind], 16,
                                  bp.GGUF_ZERO_BITS[kind])  # fmt: skip
    # 64-bit words: a K-quant field is wider than a word (rule 5: words of its own)
    assert [bp.gguf_layout(k).words_per_meta for k in KQUANTS] == [3, 2, 2, 2, 3]
    assert bp.gguf_layout("q5_0").words_per_group == 3  # 20 code bytes padded to 24


@pytest.mark.parametrize("kind", ALL)
def test_kquant_qmatmul_float_within_dot_bound(kind):
    w = _weights(3)
    raw = _raw(kind, w)
    qt = QTensor.from_gguf(raw, kind, N, K)
    ref = _ref(kind, raw, N, K).astype(np.float64)
    rng = np.random.default_rng(4)
    for m in (1, 3, 17):  # GEMV, small GEMM, the BLAS prefill path
        x = rng.standard_normal((m, K)).astype(np.float32)
        got = qmatmul(qt, x)
        want = x.astype(np.float64) @ ref.T
        # the float path reassociates s*sum(q*x) + min*sum(x): bound on |s q x| + |min x|
        q = qt.codes().astype(np.float64).reshape(N, -1, qt.group_size)
        sq = np.abs(qt.scale[:, :, None] * (q - qt.zero[:, :, None])).reshape(N, K)
        mn = np.repeat(np.abs(qt.minimum), qt.group_size, axis=1)
        abs_sum = np.abs(x).astype(np.float64) @ (sq + mn + np.abs(ref)).T
        assert_dot_close(got, want, abs_sum, K, extra_ops=8)


@pytest.mark.parametrize("kind", ("q5_0", "q5_1", "q3_k", "q4_k", "q6_k"))
def test_kquant_int_path_equals_golden(kind):
    w = _weights(5)
    qt = QTensor.from_gguf(_raw(kind, w), kind, N, K)
    rng = np.random.default_rng(6)
    for m in (1, 2, 17):
        x = rng.standard_normal((m, K)).astype(np.float32)
        a, e = quantize_act_bfp(x, qt.group_size)
        d, s = int_group_dots(qt, a)
        golden = combine_int(qt, d, s, e)
        got = qmatmul(qt, x, path="int")
        assert np.array_equal(got.view(np.uint32), golden.view(np.uint32))


def test_kquant_rom_image_roundtrip_and_cells(tmp_path):
    img = RomImage(name="kq")
    raws = {}
    for i, kind in enumerate(ALL):
        raws[kind] = _raw(kind, _weights(10 + i))
        img.add(kind, QTensor.from_gguf(raws[kind], kind, N, K))
    img.save(tmp_path / "kq.rom")
    back = RomImage.load(tmp_path / "kq.rom")
    for kind in ALL:
        qt = back[kind]
        assert qt.kind == kind
        assert np.array_equal(bp.words_to_gguf_blocks(qt.words, qt.meta, kind, N, K), raws[kind])
        assert np.array_equal(dequantize(qt), _ref(kind, raws[kind], N, K))
    assert set(back.summary()) == set(ALL)
    # a cell's words at a narrower chip word width carry the same fields
    from romsim.rom.image import run_words

    for kind in ("q4_k", "q6_k", "q5_1"):
        qt = back[kind]
        lay16 = qt.rom_layout.with_word_bits(16)
        words = run_words(qt, 1, 4, 16)
        ncode = int(lay16.code_words(3))
        assert np.array_equal(
            lay16.repack_meta(words[ncode:], 3, lay16),
            words[ncode:],
        )
        meta64 = qt.rom_layout.repack_meta(words[ncode:], 3, lay16)
        full = qt.rom_layout
        if full.meta_bits > 64:
            want = full.unpack_field_bytes(qt.meta, qt.rom_groups)[1:4]
            assert np.array_equal(full.unpack_field_bytes(meta64, 3), want)
        else:
            want = full.unpack_fields(qt.meta, qt.rom_groups)[1:4]
            assert np.array_equal(full.unpack_fields(meta64, 3), want)


def test_kquant_gguf_file_loads(tmp_path):
    from romsim.functional.gguf_io import dequantize_raw, read_gguf

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_block_count(1)
    w.add_embedding_length(256)
    w.add_feed_forward_length(512)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_context_length(64)
    raws = {}
    for kind in ("q4_k", "q6_k", "q5_0"):
        raws[kind] = _raw(kind, _weights(20, 4, 256))
        w.add_tensor(
            f"t.{kind}",
            raws[kind].reshape(4, -1),
            raw_dtype=GGMLQuantizationType[kind.upper()],
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = read_gguf(tmp_path / "m.gguf")
    for kind, raw in raws.items():
        rt = g.tensor(f"t.{kind}")
        assert rt.ggml_type == kind.upper() and rt.shape == (4, 256)
        qt = QTensor.from_gguf(rt.data, kind, 4, 256)
        assert np.array_equal(np.asarray(rt.data).reshape(-1), raw)
        assert np.array_equal(dequantize(qt), dequantize_raw(rt))


def test_kquant_rejects_bad_shapes():
    with pytest.raises(ValueError, match="K % 256"):
        quantize_kquant(np.zeros((2, 300), np.float32), "q4_k")
    with pytest.raises(ValueError, match="K % 256"):
        QTensor.from_gguf(np.zeros(144, np.uint8), "q4_k", 1, 128)
    with pytest.raises(ValueError, match="not a K-quant"):
        quantize_kquant(np.zeros((1, 256), np.float32), "q4_0")


def test_kquant_and_nf4_explorer_batched_matches_scalar():
    from romsim.config import load_chip
    from romsim.explore.evaluate import evaluate_batch
    from romsim.explore.fields import scalar_fields
    from romsim.modelspec import load_model

    base, model = load_chip("roma-3b-w4"), load_model("llama-3.2-3b")
    qs = ["q4_k", "q6_k", "q5_0", "nf4"]
    r = evaluate_batch(base, model, {"quant": np.array(qs, dtype=object)})
    for i, q in enumerate(qs):
        ref = scalar_fields(model, base.with_overrides(quant=q), 128, 128)
        for key, x in ref.items():
            y = r.fields[key][i]
            if isinstance(x, (bool, np.bool_, str)):
                assert x == y, (q, key)
            else:
                assert np.isclose(float(x), float(y), rtol=1e-9, atol=1e-12, equal_nan=True), (
                    q,
                    key,
                )
