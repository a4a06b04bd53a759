"""NF4 (QLoRA's NormalFloat-4, bitsandbytes' blocks of 64) as a ROM format, bit-exact against
``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit`` on CPU."""

from __future__ import annotations

import numpy as np
import pytest
from numerics import assert_dot_close
from romsim.kernels.qmatmul import (
    NF4_INT_REFUSAL,
    NF4_TABLE,
    QTensor,
    dequantize,
    int_group_dots,
    qmatmul,
    quantize_nf4,
)

from romsim.quant import WeightFormat, named_format
from romsim.rom.image import RomImage, run_words
from romsim.rom.layout import RomLayout

torch = pytest.importorskip("torch")
F = pytest.importorskip("bitsandbytes.functional")

N, K = 6, 256


def _weights(seed: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32)
    w[0, :64] = 0.0  # an all-zero block (absmax 0)
    w[1, 64:128] = np.float32(0.25)  # a constant block (every code 15)
    w[2] *= np.float32(1e-4)
    return w.astype(dtype)


def _bnb(w: np.ndarray):
    packed, state = F.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4")
    return packed, state


def test_nf4_table_is_bitsandbytes():
    ref = F.get_4bit_type("nf4", device="cpu").numpy()
    assert ref.dtype == np.float32 and np.array_equal(
        ref.view(np.uint32), NF4_TABLE.view(np.uint32)
    )


def test_nf4_quantizer_bit_exact_with_bitsandbytes():
    w = _weights(1)
    packed, state = _bnb(w)
    pk, am = quantize_nf4(w)
    assert np.array_equal(packed.numpy().reshape(-1), pk)
    assert np.array_equal(state.absmax.numpy().view(np.uint32), am.view(np.uint32))


def test_nf4_dequantize_bit_exact_with_bitsandbytes_fp32():
    w = _weights(2)
    packed, state = _bnb(w)
    qt = QTensor.from_nf4(packed.numpy(), state.absmax.numpy(), N, K)
    ref = F.dequantize_4bit(packed, state).numpy()
    assert ref.dtype == np.float32
    got = dequantize(qt)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
    rows = np.array([4, 1])
    assert np.array_equal(dequantize(qt, rows), ref[rows])
    # our quantizer gives the same tensor
    assert np.array_equal(dequantize(QTensor.quantize_nf4(w)), ref)


def test_nf4_dequantize_bit_exact_with_bitsandbytes_fp16():
    w16 = _weights(3, np.float16)
    packed, state = _bnb(w16)
    ref = F.dequantize_4bit(packed, state).numpy()
    assert ref.dtype == np.float16
    qt = QTensor.from_nf4(packed.numpy(), state.absmax.numpy(), N, K)
    got = dequantize(qt).astype(np.float16)  # bitsandbytes: fp32 product, then to fp16
    assert np.array_equal(got.view(np.uint16), ref.view(np.uint16))


def test_nf4_rom_words_keep_bitsandbytes_bytes(tmp_path):
    w = _weights(4)
    packed, state = _bnb(w)
    qt = QTensor.from_nf4(packed.numpy(), state.absmax.numpy(), N, K)
    lay = qt.rom_layout
    assert (lay.bits, lay.group_size, lay.scale_bits, lay.zero_bits) == (4, 64, 32, 0)
    assert lay.words_per_group == 4 and lay.metas_per_word == 2
    assert np.array_equal(qt.code_bytes(), packed.numpy().reshape(-1))  # rule 7b
    f = lay.unpack_fields(qt.meta, N * K // 64).astype(np.uint32)
    assert np.array_equal(f.view(np.float32), state.absmax.numpy())
    codes = qt.codes()
    assert np.array_equal(NF4_TABLE[codes] * np.repeat(qt.scale, 64, axis=1), dequantize(qt))
    img = RomImage(name="nf4")
    img.add("w", qt)
    img.save(tmp_path / "nf4.rom")
    back = RomImage.load(tmp_path / "nf4.rom")["w"]
    assert back.kind == "nf4" and np.array_equal(back.words, qt.words)
    assert np.array_equal(dequantize(back), dequantize(qt))
    # a 16-bit-word chip cell: the same bytes and fields, re-cut
    lay16 = lay.with_word_bits(16)
    words = run_words(qt, 2, 5, 16)
    nc = int(lay16.code_words(3))
    assert np.array_equal(lay.repack_codes(words[:nc], lay16), qt.words[8:20])
    assert np.array_equal(lay16.unpack_fields(words[nc:], 3), f[2:5])


def test_nf4_qmatmul_float_within_dot_bound():
    w = _weights(5)
    qt = QTensor.quantize_nf4(w)
    wd = dequantize(qt).astype(np.float64)
    rng = np.random.default_rng(6)
    for m in (1, 4, 16):
        x = rng.standard_normal((m, K)).astype(np.float32)
        got = qmatmul(qt, x)
        want = x.astype(np.float64) @ wd.T
        assert_dot_close(got, want, np.abs(x).astype(np.float64) @ np.abs(wd).T, K)
    assert qmatmul(qt, x[0]).shape == (N,)


def test_nf4_int_path_refused_with_one_line():
    qt = QTensor.quantize_nf4(_weights(7))
    with pytest.raises(ValueError, match="nf4 has no integer path") as ei:
        qmatmul(qt, np.ones(K, np.float32), path="int")
    assert "\n" not in str(ei.value) and str(ei.value) == NF4_INT_REFUSAL
    with pytest.raises(ValueError, match="nf4 has no integer path"):
        int_group_dots(qt, np.zeros((1, K), np.int8))


def test_nf4_format_costing():
    f = named_format("nf4")  # the perf model's name: fp16 absmax, 4.25 bits/weight
    assert f.bits_per_weight == 4.25
    f32 = WeightFormat(kind="nf4", bits=4, group_size=64, scale_bits=32)  # bitsandbytes' absmax
    assert f32.bits_per_weight == 4.5
    assert RomLayout.for_format(f32) == QTensor.quantize_nf4(_weights(8)).rom_layout


def test_nf4_area_has_codebook_decoder():
    from romsim.area.model import cell_compute_gates
    from romsim.config import ChipConfig

    base = ChipConfig()
    if base.quant.default.kind != "affine" or base.quant.default.bits != 4:
        pytest.skip("default chip is not 4-bit affine")
    nf4 = base.model_copy(
        update={"quant": base.quant.model_copy(update={"default": named_format("nf4")})}
    )
    assert cell_compute_gates(nf4) > cell_compute_gates(base)


def test_nf4_rejects_bad_shapes():
    with pytest.raises(ValueError, match="K % 64"):
        QTensor.from_nf4(np.zeros(48, np.uint8), np.zeros(1, np.float32), 1, 96)
    with pytest.raises(ValueError, match="whole blocks"):
        quantize_nf4(np.zeros((1, 96), np.float32))
