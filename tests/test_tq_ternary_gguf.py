"""llama.cpp's ternary GGUF types TQ1_0 and TQ2_0 in ROM words, bit-exact against gguf-py.

gguf-py (``gguf.quants``) both quantizes and dequantizes TQ1_0/TQ2_0, so the test tensors come
from it; the decoders are also checked on random bytes (every byte value in every position, so
TQ1_0's base-3 bytes above 242 and TQ2_0's never-written code 3 too). The int path is checked
against the golden ``combine_int(int_group_dots(...))`` and against an independent sum over the
ternary weights ``t = ref / d`` of gguf-py's own dequantization.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numerics import assert_dot_close
from romsim.kernels import bitpack as bp
from romsim.kernels.qmatmul import (
    QTensor,
    _pow2_f32,
    combine_int,
    dequantize,
    int_group_dots,
    qmatmul,
    quantize_act,
    quantize_act_bfp,
)

from romsim.errors import RomsimInputError
from romsim.modelspec import LINEAR_KINDS, load_model
from romsim.quant import WeightFormat, model_rom_bytes, named_format, named_quant
from romsim.rom.image import RomImage, cell_image, image_from_cells, run_words
from romsim.rom.layout import RomLayout

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

TQ = ("tq1_0", "tq2_0")
N, K = 6, 512  # two blocks a row


def _ternary_weights(seed: int, n: int = N, k: int = K) -> np.ndarray:
    """BitNet-like weights: per 256-block an fp16 scale times trits (so gguf-py's absmax
    quantizer reproduces them exactly), plus an all-zero block and a tiny-scale row."""
    rng = np.random.default_rng(seed)
    t = rng.integers(-1, 2, (n, k)).astype(np.float32)
    t[:, ::7] = 1.0  # every block reaches +1 (its absmax is the scale)
    d = rng.uniform(0.01, 2.0, (n, k // 256)).astype(np.float16).astype(np.float32)
    d[2] *= np.float32(2.0**-12)
    w = t * np.repeat(d, 256, axis=1)
    w[0, :256] = 0.0
    return w.astype(np.float32)


def _gauss(seed: int, n: int = N, k: int = K) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


def _quant(kind: str, w: np.ndarray) -> np.ndarray:
    raw = gguf_quantize(w, GGMLQuantizationType[kind.upper()])
    return np.asarray(raw, np.uint8).reshape(-1)


def _ref(kind: str, raw: np.ndarray, n: int = N, k: int = K) -> np.ndarray:
    out = gguf_dequantize(raw, GGMLQuantizationType[kind.upper()])
    return np.asarray(out, np.float32).reshape(n, k)


def _every_byte_blocks(kind: str, seed: int) -> np.ndarray:
    """256 blocks whose every code byte position takes each of the 256 values once (a random
    permutation per position), with finite random fp16 d: ``uint8[256, block_bytes]``."""
    rng = np.random.default_rng(seed)
    bb = bp.GGUF_BLOCK_BYTES[kind]
    blocks = np.zeros((256, bb), np.uint8)
    for j in range(bb - 2):
        blocks[:, j] = rng.permutation(256)
    d = (rng.standard_normal(256) * 0.5).astype(np.float16)
    blocks[:, bb - 2 :] = d.view(np.uint8).reshape(256, 2)
    return blocks


@pytest.mark.parametrize("kind", TQ)
def test_tq1_0_tq2_0_dequantize_bit_exact_vs_gguf_py(kind):
    for w in (_ternary_weights(1), _gauss(2)):
        raw = _quant(kind, w)
        assert raw.size == N * K // 256 * bp.GGUF_BLOCK_BYTES[kind]
        qt = QTensor.from_gguf(raw, kind, N, K)
        ref = _ref(kind, raw)
        assert np.array_equal(dequantize(qt).view(np.uint32), ref.view(np.uint32))
        rows = np.array([5, 0, 3])
        assert np.array_equal(dequantize(qt, rows).view(np.uint32), ref[rows].view(np.uint32))
    # ternary weights with fp16 block scales survive the round trip exactly
    w = _ternary_weights(3)
    assert np.array_equal(dequantize(QTensor.from_gguf(_quant(kind, w), kind, N, K)), w)


@pytest.mark.parametrize("kind", TQ)
def test_tq1_0_tq2_0_decoders_on_every_byte_value(kind):
    """256 blocks whose every code byte position takes all 256 values: the Numba decoder, the
    numpy codes and gguf-py agree bit for bit (TQ2_0 code 3 is +2, as in llama.cpp)."""
    n, k = 32, 8 * 256  # 256 blocks
    raw = _every_byte_blocks(kind, 4).reshape(-1)
    qt = QTensor.from_gguf(raw, kind, n, k)
    ref = _ref(kind, raw, n, k)
    assert np.array_equal(dequantize(qt).view(np.uint32), ref.view(np.uint32))
    q = qt.codes().astype(np.float32)
    assert q.min() >= 0 and q.max() <= (3 if kind == "tq2_0" else 2)
    s = np.repeat(qt.scale, qt.group_size, axis=1)
    assert np.array_equal(s * (q - 1), ref)
    if kind == "tq1_0":  # llama.cpp's base-3 bytes: digit p of byte v
        v = np.arange(256)
        for p, m in enumerate((1, 3, 9, 27, 81)):
            assert np.array_equal(bp.TQ1_DIGITS[:, p], ((v * m) % 256 * 3) >> 8)
        assert set(np.unique(bp.TQ1_DIGITS)) == {0, 1, 2}


@pytest.mark.parametrize("kind", TQ)
def test_tq1_0_tq2_0_rom_words_keep_llama_cpp_bytes(kind):
    raw = _quant(kind, _gauss(5))
    qt = QTensor.from_gguf(raw, kind, N, K)
    assert np.array_equal(bp.words_to_gguf_blocks(qt.words, qt.meta, kind, N, K), raw)
    lay = qt.rom_layout
    blocks = N * K // 256
    assert (lay.group_size, qt.group_size, qt.rom_groups) == (256, 32, blocks)
    assert qt.words.size == lay.code_words(blocks) and qt.meta.size == lay.meta_words(blocks)
    # rule 9b: the code bytes (TQ1_0 qs + qh, TQ2_0 qs) open each group's words, d is the field
    cb = qt.code_bytes().reshape(blocks, lay.group_bytes)
    rb = raw.reshape(blocks, bp.GGUF_BLOCK_BYTES[kind])
    ncode = bp.GGUF_QS_BYTES[kind]
    assert np.array_equal(cb[:, :ncode], rb[:, :ncode])
    assert not cb[:, ncode:].any()  # padding to whole words
    d, _ = lay.unpack_meta(qt.meta, blocks)
    assert np.array_equal(d.view(np.uint16), rb[:, ncode:].copy().view(np.uint16).reshape(-1))
    assert qt.zero.min() == qt.zero.max() == 1 and not qt.minimum.any() and not qt.has_min


def test_tq1_0_tq2_0_bits_per_weight_and_layout():
    # bits per weight include the per-block fp16 d: 54 and 66 bytes per 256 weights
    want = {"tq1_0": (1.6875, 1.625, 7, "base3"), "tq2_0": (2.0625, 2.0, 8, "bits")}
    for kind, (bpw, code_bpw, words, packing) in want.items():
        f = named_format(kind)
        assert (f.kind, f.bits, f.group_size, f.packing, f.label()) == (kind, 2, 256, packing, kind)
        assert f.bits_per_weight == bpw == 8 * bp.GGUF_BLOCK_BYTES[kind] / 256
        assert f.code_bits_per_weight == code_bpw
        assert f.meta_bits == 16 and f.tensor_meta_bits == 0 and f.sub_scale_bits == 0
        lay = RomLayout.for_format(f)
        assert lay == bp.gguf_layout(kind)
        assert lay.group_bits == 8 * bp.GGUF_QS_BYTES[kind]
        assert (lay.words_per_group, lay.meta_bits, lay.metas_per_word) == (words, 16, 4)
        assert f.words_per_group(16) == math.ceil(8 * bp.GGUF_QS_BYTES[kind] / 16)
        # the perf model's ideal ROM bytes
        m = load_model("llama-3.2-3b")
        weights = sum(math.prod(m.linear_shape(lk)) for lk in LINEAR_KINDS) * m.n_layers
        assert model_rom_bytes(m, named_quant(kind), False) == pytest.approx(weights * bpw / 8)
    # TQ1_0's 52 code bytes are exactly rule 3b's base-3 count for 256 trits
    assert RomLayout(2, 256, 0, 0, 64, packing="base3").group_bits == 8 * bp.GGUF_QS_BYTES["tq1_0"]
    assert named_format("TQ2_0").kind == "tq2_0"
    with pytest.raises(RomsimInputError):
        named_format("tq3_0")
    with pytest.raises(ValueError, match="packing"):
        WeightFormat(kind="tq1_0", bits=2, group_size=256, packing="bits")
    with pytest.raises(ValueError, match="packing"):
        WeightFormat(kind="tq2_0", bits=2, group_size=256, packing="base3")
    with pytest.raises(ValueError, match="fixed"):
        WeightFormat(kind="tq1_0", bits=2, group_size=128)
    f = WeightFormat(kind="tq1_0", bits=2, group_size=256)
    assert f.packing == "base3" and WeightFormat.model_validate(f.model_dump()) == f


@pytest.mark.parametrize("kind", TQ)
def test_tq1_0_tq2_0_qmatmul_float_within_dot_bound(kind):
    raw = _quant(kind, _ternary_weights(6))
    qt = QTensor.from_gguf(raw, kind, N, K)
    ref = _ref(kind, raw).astype(np.float64)
    rng = np.random.default_rng(7)
    for m in (1, 3, 17):  # GEMV, small GEMM, the BLAS prefill path
        x = rng.standard_normal((m, K)).astype(np.float32)
        got = qmatmul(qt, x)
        want = x.astype(np.float64) @ ref.T
        # s*sum(q*x) - s*z*sum(x), reassociated: bound on |s q x| + |s z x| + |w x|
        q = qt.codes().astype(np.float64)
        s = np.repeat(qt.scale, qt.group_size, axis=1).astype(np.float64)
        abs_sum = np.abs(x).astype(np.float64) @ (np.abs(s * q) + np.abs(s) + np.abs(ref)).T
        assert_dot_close(got, want, abs_sum, K, extra_ops=8)
    assert qmatmul(qt, x[0]).shape == (N,)


@pytest.mark.parametrize("kind", TQ)
def test_tq1_0_tq2_0_int_path_equals_golden_and_ternary_sum(kind):
    w = _ternary_weights(8)
    raw = _quant(kind, w)
    qt = QTensor.from_gguf(raw, kind, N, K)
    ref = _ref(kind, raw)
    # the int path's weights are integer codes in {-1, 0, 1} times the block's d
    d = np.repeat(qt.scale, qt.group_size, axis=1)
    t = np.where(d != 0, ref / np.where(d != 0, d, 1), 0)
    assert np.array_equal(t, np.rint(t)) and set(np.unique(t)) <= {-1.0, 0.0, 1.0}
    rng = np.random.default_rng(9)
    for m in (1, 2, 17):
        x = rng.standard_normal((m, K)).astype(np.float32) * np.float32(10.0 ** (m % 3 - 1))
        a, e = quantize_act_bfp(x, qt.group_size)
        D, S = int_group_dots(qt, a)
        golden = combine_int(qt, D, S, e)
        got = qmatmul(qt, x, path="int")
        assert np.array_equal(got.view(np.uint32), golden.view(np.uint32))
        shared = qmatmul(qt, x, path="int", act=quantize_act(x, K, qt.group_size))
        assert np.array_equal(shared.view(np.uint32), golden.view(np.uint32))
        # independent: T = sum t*m (exact integers), p = fp32(T)*d*2**e summed in K order
        ng = K // qt.group_size
        T = np.einsum("ngi,mgi->mng", t.astype(np.int64).reshape(N, ng, -1),
                      a.astype(np.int64).reshape(m, ng, -1))  # fmt: skip
        assert np.array_equal(T, D.astype(np.int64) - S[:, None, :])  # D - z*S with z = 1
        p = (T.astype(np.float32) * qt.scale[None]) * _pow2_f32(e)[:, None, :]
        acc = np.zeros((m, N), np.float32)
        for g in range(ng):
            acc = acc + p[:, :, g]
        assert np.array_equal(got.view(np.uint32), acc.view(np.uint32))
    # the dequant_ref partials (the RTL's golden numbers) sum to the int path too
    from romsim.kernels.dequant_ref import rowblock_sums

    x = rng.standard_normal((1, K)).astype(np.float32)
    a, e = quantize_act_bfp(x, qt.group_size)
    ng = K // qt.group_size
    r0, sums = rowblock_sums(qt, a, e, [(0, 2 * ng), (2 * ng, 4 * ng)])
    assert r0 == 0
    assert np.array_equal(sums[0], qmatmul(qt, x[0], path="int")[:4])


def test_tq1_0_tq2_0_rom_image_file_and_cells(tmp_path):
    from romsim.config import chip_from_dict
    from romsim.mapping import Mapping
    from romsim.modelspec import ModelSpec

    model = ModelSpec(
        name="tiny-tq",
        hidden_size=256,
        intermediate_size=512,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        head_dim=128,
        vocab_size=32,
        tie_word_embeddings=True,
    )
    raws: dict[str, tuple[str, np.ndarray]] = {}
    for wb in (64, 32, 16, 8):
        chip = chip_from_dict(
            {
                "quant": {"default": "tq1_0", "overrides": {"mlp": "tq2_0"}},
                "cell": {"cells_per_unit": 3},
                "mesh": {"rows": 2, "cols": 2, "vector_rows": 1},
                "rom": {"word_bits": wb},
                "placement": {"lm_head": "off_chip"},
            },
            source="test",
        )
        mp = Mapping(model, chip)
        img = RomImage(name="tq")
        for i, mt in enumerate(mp.matrices):
            kind = mt.fmt.kind
            if mt.name not in raws:
                w = _ternary_weights(20 + i, mt.rows, mt.cols)
                raws[mt.name] = (kind, _quant(kind, w))
            img.add(mt.name, QTensor.from_gguf(raws[mt.name][1], kind, mt.rows, mt.cols))
        assert {m.fmt.kind for m in mp.matrices} == set(TQ)
        cells = [cell_image(img, mp, c) for c in range(mp.n_cells)]
        for c in (0, mp.n_cells - 1):
            assert cells[c].size == mp.rows_per_cell[c]
            for mt, start, stop, row in mp.cell_layout(c):
                run = run_words(img[mt.name], start, stop, wb)
                assert np.array_equal(cells[c][row : row + run.size], run)
                assert run.size == int(mt.layout.rom_rows(stop - start))
        back = image_from_cells(cells, mp, img)
        for nm in img:
            assert np.array_equal(back[nm].words, img[nm].words)
            assert np.array_equal(back[nm].meta, img[nm].meta)
    img.save(tmp_path / "tq.rom")
    loaded = RomImage.load(tmp_path / "tq.rom")
    for nm, (kind, raw) in raws.items():
        qt = loaded[nm]
        assert qt.kind == kind
        assert np.array_equal(bp.words_to_gguf_blocks(qt.words, qt.meta, kind, qt.n, qt.k), raw)
        assert np.array_equal(dequantize(qt), _ref(kind, raw, qt.n, qt.k))
    assert set(loaded.summary()) == set(TQ)


def test_tq1_0_tq2_0_gguf_file_loads_into_rom_image(tmp_path):
    from romsim.functional.gguf_io import dequantize_raw, read_gguf
    from romsim.functional.model import LINEAR_GGUF, rom_image_from_gguf

    hidden, ff, vocab = 256, 512, 32
    shapes = {"attn_q": (256, 256), "attn_k": (128, 256), "attn_v": (128, 256),
              "attn_output": (256, 256), "ffn_gate": (512, 256), "ffn_up": (512, 256),
              "ffn_down": (256, 512)}  # fmt: skip
    w = gguf.GGUFWriter(str(tmp_path / "tq.gguf"), "llama")
    w.add_block_count(1)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_context_length(64)
    w.add_vocab_size(vocab)
    raws = {}
    for i, (nm, (n, k)) in enumerate(shapes.items()):
        kind = TQ[i % 2]
        raws[nm] = (kind, _quant(kind, _ternary_weights(30 + i, n, k)))
        qt = GGMLQuantizationType[kind.upper()]
        w.add_tensor(f"blk.0.{nm}.weight", raws[nm][1].reshape(n, -1), raw_dtype=qt)
    emb = _gauss(40, vocab, hidden)
    emb_raw = np.asarray(gguf_quantize(emb, GGMLQuantizationType.Q8_0), np.uint8)
    w.add_tensor("token_embd.weight", emb_raw, raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = read_gguf(tmp_path / "tq.gguf")
    img = rom_image_from_gguf(g)
    for kind_name, gname in LINEAR_GGUF.items():
        rt = g.tensor(f"blk.0.{gname}.weight")
        kind, raw = raws[gname]
        assert rt.ggml_type == kind.upper() and rt.shape == shapes[gname]
        qt = img[f"layers.0.{kind_name}"]
        assert qt.kind == kind
        assert np.array_equal(bp.words_to_gguf_blocks(qt.words, qt.meta, kind, *rt.shape), raw)
        assert np.array_equal(dequantize(qt), dequantize_raw(rt))
    assert img["lm_head"].kind == "q8_0"


def test_tq1_0_tq2_0_reject_bad_shapes():
    with pytest.raises(ValueError, match="K % 256"):
        QTensor.from_gguf(np.zeros(54, np.uint8), "tq1_0", 1, 128)
    with pytest.raises(ValueError, match="expected"):
        QTensor.from_gguf(np.zeros(60, np.uint8), "tq2_0", 1, 256)
    with pytest.raises(ValueError, match="fixed"):
        QTensor.from_words("tq2_0", 2, 256, 1, 256, np.zeros(8, np.uint64), np.zeros(1, np.uint64))
    # base-3 codes still have no numpy code packer (the GGUF blocks keep llama.cpp's bytes)
    with pytest.raises(ValueError, match="base-3"):
        bp.gguf_layout("tq1_0").pack_codes(np.zeros((1, 256), np.uint8))


def test_tq1_0_tq2_0_explorer_batched_matches_scalar():
    from romsim.config import load_chip
    from romsim.explore.evaluate import evaluate_batch
    from romsim.explore.fields import scalar_fields
    from romsim.modelspec import load_model

    base, model = load_chip("roma-3b-w4"), load_model("llama-3.2-3b")
    qs = ["tq1_0", "tq2_0", "ternary-b3"]
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
    # TQ1_0 stores fewer ROM bytes than TQ2_0, both pay for their per-block d
    rb = {q: float(r.fields["rom_bytes"][i]) for i, q in enumerate(qs)}
    assert rb["tq1_0"] < rb["tq2_0"]
