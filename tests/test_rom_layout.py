"""romsim.rom.layout: the one ROM word layout, and everyone who counts words agreeing with it.

Round trips of codes and metadata for every code width, group size, zero-point width and
packable word width; words per group / ROM rows agreeing between the mapping, the ROM image, the
RTL parameters and the performance model for random formats; ``romsim rtl`` bad input.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romsim.rom.layout import KERNEL_WORD_BITS, PACKABLE_WORD_BITS, RomLayout

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
word_bits = st.sampled_from(PACKABLE_WORD_BITS)


def _bits_at(words: np.ndarray, word_bits: int, bit: int, width: int) -> int:
    """``width`` bits starting at stream bit ``bit`` of a run of ``word_bits``-wide words."""
    v = 0
    for j in range(width):
        w, o = divmod(bit + j, word_bits)
        v |= ((int(words[w]) >> o) & 1) << j
    return v


# ---- codes ------------------------------------------------------------------------------------


@SETTINGS
@given(
    n=st.integers(1, 9),
    k=st.integers(1, 300),
    bits=st.integers(1, 8),
    g=st.sampled_from([8, 16, 24, 32, 40, 64, 128, 256, 5, 12]),
    wb=word_bits,
    seed=st.integers(0, 2**31),
)
def test_codes_roundtrip_and_bit_positions(n, k, bits, g, wb, seed):
    lay = RomLayout(bits, g, word_bits=wb)
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
    words = lay.pack_codes(codes)
    ng = -(-k // g)
    assert words.dtype == np.uint64 and words.size == lay.code_words(n * ng)
    assert words.size == n * ng * -(-g * bits // wb)
    assert int(words.max(initial=0)) >> wb == 0  # a word holds W bits, the rest is zero
    assert np.array_equal(lay.unpack_codes(words, n, k), codes)
    # the documented positions: code i of group (r, gi) at stream bit i*bits, word i*bits // W
    r, gi = int(rng.integers(n)), int(rng.integers(ng))
    run = words[(r * ng + gi) * lay.words_per_group : (r * ng + gi + 1) * lay.words_per_group]
    for i in {0, min(g, k - gi * g) - 1, int(rng.integers(min(g, k - gi * g)))}:
        w, o = lay.code_position(i)
        assert w * wb + o == i * bits
        assert _bits_at(run, wb, i * bits, bits) == codes[r, gi * g + i]
    # the padding of a group (short-row codes and word padding) is zero
    assert _bits_at(run, wb, g * bits, lay.words_per_group * wb - g * bits) == 0


@SETTINGS
@given(
    ng=st.integers(1, 40),
    bits=st.sampled_from([2, 3, 4, 8]),
    g=st.sampled_from([8, 32, 64, 128]),
    src=word_bits,
    dst=word_bits,
    seed=st.integers(0, 999),
)
def test_repack_between_word_widths(ng, bits, g, src, dst, seed):
    """Repacking whole groups to another word width = packing the same codes at that width."""
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (ng, g), dtype=np.uint8)
    a, b = RomLayout(bits, g, word_bits=src), RomLayout(bits, g, word_bits=dst)
    got = b.repack_codes(a.pack_codes(codes), a)
    assert np.array_equal(got, b.pack_codes(codes))


# ---- metadata ---------------------------------------------------------------------------------


@SETTINGS
@given(
    count=st.integers(0, 300),
    zb=st.integers(0, 16),
    wb=word_bits,
    seed=st.integers(0, 999),
)
def test_meta_roundtrip_and_positions(count, zb, wb, seed):
    lay = RomLayout(4, 128, zero_bits=zb, word_bits=wb)
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(count).astype(np.float16)
    z = rng.integers(0, 1 << zb, count) if zb else None
    words = lay.pack_meta(s, z)
    assert words.size == lay.meta_words(count)
    if lay.meta_bits <= wb:
        assert lay.metas_per_word == wb // lay.meta_bits and lay.words_per_meta == 1
    else:
        assert lay.metas_per_word == 1 and lay.words_per_meta == -(-lay.meta_bits // wb)
    s2, z2 = lay.unpack_meta(words, count)
    assert np.array_equal(s2.view(np.uint16), s.view(np.uint16))
    if zb:
        assert np.array_equal(z2, z)
    if count:  # field j at the documented word and bit: scale low, zero above
        j = int(rng.integers(count))
        w, o = lay.meta_position(j)
        field = _bits_at(words[w:], wb, o, lay.meta_bits)
        assert field & 0xFFFF == int(s.view(np.uint16)[j])
        assert field >> 16 == (int(z[j]) if zb else 0)


def test_layout_refuses_what_it_cannot_pack():
    with pytest.raises(ValueError, match="cannot be packed"):
        RomLayout(4, 128, word_bits=128).pack_codes(np.zeros((1, 128), np.uint8))
    with pytest.raises(ValueError, match="out of range"):
        RomLayout(2, 8).pack_codes(np.full((1, 8), 4))
    with pytest.raises(ValueError):
        RomLayout(0, 128)
    # counting works at any width (the hardware model's estimates)
    lay = RomLayout(4, 128, zero_bits=4, word_bits=128)
    assert (lay.words_per_group, lay.metas_per_word, int(lay.rom_rows(7))) == (4, 6, 30)


# ---- everyone agrees --------------------------------------------------------------------------

formats = st.tuples(
    st.sampled_from([2, 3, 4, 8]),  # bits
    st.sampled_from([32, 64, 128, 256]),  # group size
    st.booleans(),  # symmetric
    st.sampled_from([8, 16, 32, 64, 48, 128]),  # word bits (48, 128: hardware model only)
    st.integers(1, 13),  # cells per unit
)


def _chip(bits, g, sym, wb, cpu):
    from romsim.config import chip_from_dict

    return chip_from_dict(
        {
            "quant": f"w{bits}g{g}{'s' if sym else ''}",
            "cell": {"cells_per_unit": cpu},
            "mesh": {"rows": 2, "cols": 2, "vector_rows": 1},
            "rom": {"word_bits": wb},
            "placement": {"lm_head": "off_chip"},
        },
        source="test",
    )


def _tiny_model():
    from romsim.modelspec import ModelSpec

    return ModelSpec(
        name="tiny",
        hidden_size=64,
        intermediate_size=96,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        head_dim=32,
        vocab_size=50,
        tie_word_embeddings=True,
    )


@settings(max_examples=30, deadline=None, derandomize=True)
@given(formats)
def test_words_agree_between_mapping_rtl_perf_and_layout(f):
    from romsim.rtl.params import CellParams

    from romsim.mapping import Mapping
    from romsim.perf.model import PerfModel

    bits, g, sym, wb, cpu = f
    chip = _chip(bits, g, sym, wb, cpu)
    fmt = chip.quant.default
    lay = RomLayout.for_format(fmt, wb)
    assert fmt.words_per_group(wb) == lay.words_per_group == -(-g * bits // wb)
    assert fmt.metas_per_word(wb) == lay.metas_per_word
    mp = Mapping(_tiny_model(), chip)
    rows = np.zeros(mp.n_cells, np.int64)
    for m in mp.matrices:
        assert (m.words_per_group, m.metas_per_word) == (lay.words_per_group, lay.metas_per_word)
        per_cell = [int(m.rom_rows(m.groups_in_cell(c))) for c in range(mp.n_cells)]
        rows += per_cell
        assert sum(per_cell) == m.total_rom_rows
        n = m.max_groups_per_cell
        if n and (g * bits) % wb == 0 and lay.meta_bits <= wb:  # what the RTL cell takes
            p = CellParams(
                bits=bits,
                group_size=g,
                word_bits=wb,
                n_groups=n,
                ng_row=m.groups_per_row,
                zero_bits=fmt.zero_bits,
            )
            assert (p.words_per_group, p.metas_per_word) == (
                lay.words_per_group,
                lay.metas_per_word,
            )
            assert p.rom_rows == int(m.rom_rows(n)) == int(lay.rom_rows(n))
    assert np.array_equal(rows, mp.rows_per_cell)
    # perf: time charges the busiest cell's words, the ROM-bit counter the dense words
    pm = PerfModel(_tiny_model(), chip, mp)
    op = next(o for o in pm.decode_table.ops if o.name == "down")
    (down,) = [m for m in mp.layer_matrices(0) if m.kind == "down"]
    assert op.stages["rom"][0] >= int(down.rom_rows(down.max_groups_per_cell))
    dense = lay.dense_words(down.n_groups)
    assert op.events["rom_bits"][0] == pytest.approx(dense * wb)
    assert 0 <= down.total_rom_rows - dense <= mp.n_cells * lay.words_per_meta


@pytest.mark.parametrize("wb", [64, 32, 16])
@pytest.mark.parametrize("bits", [3, 4])
def test_image_and_rtl_tile_words_agree(wb, bits):
    """The ROM image's per-cell words (cell_image) hold, per matrix, exactly the RTL tile's words
    and the mapping's row count, at the chip's word width; the codes in them are the kernels'."""
    from romsim.kernels.qmatmul import QTensor

    from romsim.mapping import Mapping
    from romsim.rom.image import RomImage, cell_image, run_words

    chip = _chip(bits, 32, False, wb, 3)
    mp = Mapping(_tiny_model(), chip)
    rng = np.random.default_rng(bits)
    img = RomImage()
    for m in mp.matrices:
        w = rng.standard_normal((m.rows, m.cols)).astype(np.float32)
        img.add(m.name, QTensor.quantize(w, bits, 32))
    for c in (0, mp.n_cells - 1):
        words = cell_image(img, mp, c)
        assert words.size == mp.rows_per_cell[c]
        for m, start, stop, row in mp.cell_layout(c):
            run = run_words(img[m.name], start, stop, wb)
            assert np.array_equal(words[row : row + run.size], run)
            lay = m.layout
            ncode = int(lay.code_words(stop - start))
            codes = lay.unpack_codes(run[:ncode], stop - start, 32)
            want = img[m.name].codes().reshape(-1, 32)[start:stop]
            assert np.array_equal(codes, want)


def test_image_refuses_unpackable_word_bits():
    from romsim.kernels.qmatmul import QTensor

    from romsim.mapping import Mapping
    from romsim.rom.image import RomImage, RomImageError, cell_image

    chip = _chip(4, 32, False, 48, 1)
    mp = Mapping(_tiny_model(), chip)
    img = RomImage()
    for m in mp.matrices:
        img.add(m.name, QTensor.quantize(np.zeros((m.rows, m.cols), np.float32), 4, 32))
    with pytest.raises(RomImageError, match="rom.word_bits = 48"):
        cell_image(img, mp, 0)


def test_kernel_tensors_use_64_bit_layout():
    from romsim.kernels.qmatmul import QTensor

    qt = QTensor.quantize(np.ones((3, 40), np.float32), 3, 16)
    assert qt.rom_layout == RomLayout(3, 16, 3, 16, KERNEL_WORD_BITS)
    assert qt.words.size == qt.rom_layout.code_words(3 * 3)
    assert qt.meta.size == qt.rom_layout.meta_words(3 * 3)


# ---- romsim rtl: bad input --------------------------------------------------------------------


def _bad_out(kind: str, tmp: Path) -> str:
    if kind == "file":
        (tmp / "f").write_text("x")
        return str(tmp / "f")
    if kind == "under_file":
        (tmp / "f").write_text("x")
        return str(tmp / "f" / "sub")
    ro = tmp / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    return str(ro / "out")


BUILD = ["rtl", "build", "--tile", "smollm2-135m:0:q:5"]
BAD = [
    ("cells0", BUILD + ["--cells", "0"], "--cells"),
    ("cells-1", BUILD + ["--cells", "-1"], "--cells"),
    ("cells_past_chip", BUILD + ["--cells", "60"], "--cells"),
    ("tokens0", BUILD + ["--max-tokens", "0"], "--max-tokens"),
    ("tokens-1", BUILD + ["--max-tokens", "-1"], "--max-tokens"),
    ("tokens_huge", BUILD + ["--max-tokens", "100000"], "--max-tokens"),
    ("rows_float", BUILD + ["--rows", "1e8"], "--rows"),
    ("rows_huge", BUILD + ["--rows", "100000000"], "--rows"),
    ("rows_negative", BUILD + ["--rows", "-5"], "--rows"),
    ("rows_below_tile", BUILD + ["--rows", "10"], "--rows"),
    ("cols0", BUILD + ["--cols", "0"], "--cols"),
    ("cols_odd", BUILD + ["--cols", "48"], "--cols"),
    ("cols_128", BUILD + ["--cols", "128"], "--cols"),
    ("cols_nondividing", BUILD + ["--bits", "3", "--group-size", "8", "--cols", "16"], "--cols"),
    ("cols_text", BUILD + ["--cols", "wide"], "--cols"),
    ("group0", BUILD + ["--group-size", "0"], "--group-size"),
    ("group_odd", BUILD + ["--group-size", "100"], "--group-size"),
    ("group_huge", BUILD + ["--group-size", "100000"], "--group-size"),
    ("acc_huge", BUILD + ["--acc-bits", "4096"], "--acc-bits"),
    ("tile_cell", ["rtl", "build", "--tile", "smollm2-135m:0:q:-1"], "tile"),
    ("tile_form", ["rtl", "build", "--tile", "smollm2-135m:0:q"], "tile"),
    ("synth_word0", ["rtl", "synth", "--bits", "4", "--word-bits", "0"], "--word-bits"),
    ("synth_word_huge", ["rtl", "synth", "--bits", "4", "--word-bits", "65536"], "--word-bits"),
    ("synth_word_nondividing", ["rtl", "synth", "--bits", "4", "--word-bits", "24"], "word_bits"),
    ("out_file", "file", "--out"),
    ("out_under_file", "under_file", "--out"),
    ("out_unwritable", "ro", "--out"),
]


@pytest.mark.parametrize("name,argv,needle", BAD, ids=[b[0] for b in BAD])
def test_rtl_cli_bad_input_one_line(name, argv, needle, tmp_path, capsys):
    from romsim.cli import main

    if isinstance(argv, str):
        if argv == "ro" and os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        argv = BUILD + ["--out", _bad_out(argv, tmp_path)]
    else:
        argv = [*argv, "--out", str(tmp_path / "build")] if argv[1] == "build" else argv
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("romsim: error:"), err
    assert needle in lines[0]
    assert not (tmp_path / "build").exists()  # nothing written
