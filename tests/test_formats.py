"""Weight formats beyond 2/3/4/8-bit affine: ternary (2-bit codes and base-3 packing), 5- and
6-bit codes, mixed widths within a tensor, and the placement of the embedding table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from romsim.config import chip_from_dict, load_chip
from romsim.errors import RomsimInputError
from romsim.mapping import Mapping, MatrixTiles
from romsim.modelspec import LINEAR_KINDS, ModelSpec, load_model
from romsim.perf.memory import (
    embed_read_per_token,
    embed_sram_bytes,
    kv_bytes_per_token,
    lora_bytes,
    max_context_tokens,
)
from romsim.quant import (
    FORMAT_BITS,
    MixSpec,
    QuantSpec,
    WeightFormat,
    model_rom_bytes,
    named_format,
    named_quant,
    rom_tables,
)
from romsim.rom.layout import RomLayout

# ---- bits per weight ---------------------------------------------------------------------------


def test_ternary_bits_per_weight():
    t2 = named_format("ternary")
    t3 = named_format("ternary-b3")
    assert (t2.kind, t2.bits, t2.packing, t2.group_size) == ("ternary", 2, "bits", 128)
    assert (t3.kind, t3.bits, t3.packing, t3.group_size) == ("ternary", 2, "base3", 160)
    assert t2.meta_bits == t3.meta_bits == 0  # the one absmean scale is per tensor
    assert t2.tensor_meta_bits == 16
    assert t2.bits_per_weight == 2.0
    assert t3.bits_per_weight == pytest.approx(1.6)
    assert named_format("ternary-b3g320").bits_per_weight == pytest.approx(1.6)


@pytest.mark.parametrize("bits", FORMAT_BITS)
@pytest.mark.parametrize("group", [32, 64, 128])
def test_affine_and_symmetric_bits_per_weight(bits, group):
    a = named_format(f"w{bits}g{group}")
    s = named_format(f"w{bits}g{group}s")
    assert a.bits_per_weight == pytest.approx(bits + (16 + bits) / group)
    assert s.bits_per_weight == pytest.approx(bits + 16 / group)
    assert a.label() == f"w{bits}g{group}" and s.label() == f"w{bits}g{group}s"


@given(
    b1=st.sampled_from(FORMAT_BITS),
    b2=st.sampled_from(FORMAT_BITS),
    f=st.floats(0.01, 0.99),
    g=st.sampled_from([32, 64, 128, 256]),
    sym=st.booleans(),
)
def test_mix_bits_per_weight(b1, b2, f, g, sym):
    if b1 == b2:
        with pytest.raises(ValidationError):
            WeightFormat(bits=b1, mix=MixSpec(bits=b2, fraction=f))
        return
    kind = "symmetric" if sym else "affine"
    fmt = WeightFormat(kind=kind, bits=b1, group_size=g, mix=MixSpec(bits=b2, fraction=f))
    m1 = 16 + (0 if sym else b1)
    m2 = 16 + (0 if sym else b2)
    want = (1 - f) * b1 + f * b2 + ((1 - f) * m1 + f * m2) / g
    assert fmt.bits_per_weight == pytest.approx(want)
    assert fmt.mix_format.bits == b2 and fmt.base_format.mix is None
    # the label round-trips through the named-format parser
    assert named_format(fmt.label()) == fmt


# ---- named formats -----------------------------------------------------------------------------

GOOD_NAMES = {
    "w5g128": ("affine", 5, 128, None),
    "w6g64s": ("symmetric", 6, 64, None),
    "w5": ("affine", 5, 128, None),
    "w6": ("affine", 6, 128, None),
    "w3g128+w6x0.25": ("affine", 3, 128, (6, 0.25)),
    "w3g64s+w6x.5": ("symmetric", 3, 64, (6, 0.5)),
    "w4+w2x0.1": ("affine", 4, 128, (2, 0.1)),
    "ternary": ("ternary", 2, 128, None),
    "ternary-b3": ("ternary", 2, 160, None),
    "TERNARY-B3G320": ("ternary", 2, 320, None),
}


@pytest.mark.parametrize("name", sorted(GOOD_NAMES))
def test_named_formats(name):
    kind, bits, g, mix = GOOD_NAMES[name]
    fmt = named_format(name)
    assert (fmt.kind, fmt.bits, fmt.group_size) == (kind, bits, g)
    assert (None if fmt.mix is None else (fmt.mix.bits, fmt.mix.fraction)) == mix
    assert named_format(fmt.label()) == fmt


def test_split_names_take_five_and_six_bits():
    q = named_quant("w6attn-w5mlp")
    assert q.for_kind("q").bits == 6 and q.for_kind("down").bits == 5


BAD_NAMES = [
    "w7g128",
    "w1",
    "w3g128+w3x0.5",  # same width twice
    "w3g128+w6x1.0",
    "w3g128+w6x0",
    "w3g128+w6x1.5",
    "w3g128+w7x0.25",
    "w3g128+w6",
    "ternary-b4",
    "ternaryg12",
    "ternary-b3g4",
    "nf4+w6x0.25",
    "q4_0+w6x0.2",
    "w3attn-w2mlp+w6x0.25",
    "ternary+w6x0.25",
    "",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_one_line_input_errors(name):
    with pytest.raises(RomsimInputError) as e:
        named_quant(name)
    assert "\n" not in str(e.value) and "quant" in str(e.value)


def test_bad_format_tables():
    with pytest.raises(ValidationError):
        WeightFormat(kind="ternary", bits=4)
    with pytest.raises(ValidationError):
        WeightFormat(kind="affine", packing="base3")
    with pytest.raises(ValidationError):
        WeightFormat(kind="nf4", mix=MixSpec(bits=6, fraction=0.2))
    with pytest.raises(ValidationError):
        WeightFormat(kind="ternary", zero_bits=2)
    with pytest.raises(RomsimInputError):
        named_format("w4attn-w2mlp")  # two formats where one is wanted


def test_chip_toml_forms(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('base = "roma-8b-w2"\nquant = "ternary"\n')
    assert load_chip(str(p)).quant.default.kind == "ternary"
    p.write_text(
        'base = "roma-8b-w2"\n[quant]\ndefault = "w3g128+w6x0.25"\n'
        '[quant.overrides]\nembed = "w4g128"\nattn = { bits = 6, mix = { bits = 3, fraction = 0.5 } }\n'
    )
    q = load_chip(str(p)).quant
    assert q.default.mix == MixSpec(bits=6, fraction=0.25, zero_bits=6)
    assert q.for_kind("embed").bits == 4
    assert q.for_kind("q").mix.bits == 3
    p.write_text('base = "roma-8b-w2"\n[quant]\ndefault = "w9"\n')
    with pytest.raises(RomsimInputError) as e:
        load_chip(str(p))
    assert "\n" not in str(e.value)


# ---- ROM layout counting -----------------------------------------------------------------------


@given(g=st.integers(1, 4096), w=st.integers(1, 1024))
def test_base3_words_per_group(g, w):
    lay = RomLayout(2, g, 0, 0, w, packing="base3")
    assert lay.words_per_group == math.ceil(8 * math.ceil(g / 5) / w)
    assert lay.meta_words(123) == 0 and lay.words_per_meta == 0
    assert lay.rom_rows(7) == 7 * lay.words_per_group
    two = RomLayout(2, g, 0, 0, w)
    assert two.words_per_group == math.ceil(2 * g / w)


def test_ternary_layout_from_format():
    t3 = RomLayout.for_format(named_format("ternary-b3"), 64)
    assert (t3.words_per_group, t3.meta_bits, t3.packing) == (4, 0, "base3")  # 160 trits
    assert RomLayout.for_format(named_format("ternary-b3g128"), 64).words_per_group == 4
    assert RomLayout.for_format(named_format("ternary"), 64).words_per_group == 4
    with pytest.raises(ValueError):
        t3.pack_codes(np.zeros((1, 160), np.uint8))


@pytest.mark.parametrize("bits", [5, 6])
def test_five_and_six_bit_codes_pack(bits):
    lay = RomLayout(bits, 64, bits, 16, 64)
    assert lay.words_per_group == math.ceil(64 * bits / 64)
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, (3, 200), dtype=np.uint8)
    assert np.array_equal(lay.unpack_codes(lay.pack_codes(codes), 3, 200), codes)


# ---- mapping: mixes ----------------------------------------------------------------------------


def _brute_rows(m: MatrixTiles) -> np.ndarray:
    """Per-cell words of one matrix from an explicit per-group list: which groups are wide, the
    narrow then the wide groups dealt in runs, each run's words counted group by group."""
    mask = m.wide_mask()
    assert mask.sum() == m.n_wide
    rows = np.zeros(m.n_cells, np.int64)
    for run, n_cls in zip(m.runs, (int((~mask).sum()), int(mask.sum())), strict=False):
        assert run.n_groups == n_cls
        lay = run.layout
        for c in range(m.n_cells):
            s, e = run.group_range(c)
            k = e - s
            if k:
                words = sum(lay.words_per_group for _ in range(k))
                per = lay.metas_per_word
                words += sum(lay.words_per_meta for j in range(k) if j % per == 0)
                rows[c] += words
    return rows


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 64),
    k=st.integers(8, 1024),
    cells=st.integers(1, 40),
    rot=st.integers(0, 39),
    b1=st.sampled_from(FORMAT_BITS),
    b2=st.sampled_from(FORMAT_BITS),
    f=st.floats(0.01, 0.99),
    g=st.sampled_from([32, 64, 128]),
    wb=st.sampled_from([8, 16, 32, 64, 128]),
)
def test_mixed_rom_rows_equal_brute_force(n, k, cells, rot, b1, b2, f, g, wb):
    if b1 == b2:
        return
    fmt = WeightFormat(bits=b1, group_size=g, mix=MixSpec(bits=b2, fraction=f))
    m = MatrixTiles(0, "m", 0, "q", n, k, fmt, cells, rot % cells, wb)
    brute = _brute_rows(m)
    exact = np.array([m.cell_rom_rows(c) for c in range(cells)])
    assert np.array_equal(exact, brute)
    assert m.max_rom_rows_per_cell == brute.max()  # what the perf model charges
    assert int(m.rom_rows(m.max_groups_per_cell)) == brute.max()
    counts = np.array([m.groups_in_cell(c) for c in range(cells)])
    assert m.max_groups_per_cell == counts.max() and counts.sum() == m.n_groups
    assert m.total_rom_rows == brute.sum()
    # wide groups are spread evenly: every cell within one of the others
    wide = m.runs[1].cell_counts()
    assert wide.max() - wide.min() <= 1
    assert m.n_wide == int(math.floor(f * m.n_groups + 0.5))


def test_mapping_rows_per_cell_exact_for_a_mix():
    model = ModelSpec("tiny", 256, 512, 2, 4, 2, 64, 1000, False)
    chip = chip_from_dict(
        {
            "mesh": {"rows": 3, "cols": 3, "vector_rows": 1},
            "cell": {"cells_per_unit": 5},
            "quant": "w3g64+w6x0.3",
            "placement": {"lm_head": "rom", "embed": "rom"},
        }
    )
    mp = Mapping(model, chip)
    assert [m.kind for m in mp.matrices][0] == "embed"
    assert mp.matrices[-1].kind == "lm_head"
    per_cell = np.array([mp.cell_rom_rows(c) for c in range(mp.n_cells)])
    assert np.array_equal(mp.rows_per_cell, per_cell)
    brute = sum(_brute_rows(m) for m in mp.matrices)
    assert np.array_equal(mp.rows_per_cell, brute)
    with pytest.raises(RomsimInputError):
        mp.cell_layout(0)  # the ROM image holds single-width matrices only


def test_single_width_mapping_unchanged_by_runs():
    """A matrix without a mix is one run: the old formulas."""
    m = MatrixTiles(0, "m", 0, "q", 3072, 3072, named_format("w4g128"), 24576, 17, 64)
    assert len(m.runs) == 1 and m.n_wide == 0
    assert m.max_rom_rows_per_cell == m.layout.rom_rows(m.max_groups_per_cell)
    assert m.max_cell_code_bits == m.max_groups_per_cell * 128 * 4


def test_roma_presets_rows_unchanged():
    """The ROM capacity rows of the paper's configurations (embedding off chip by default)."""
    for preset, model, rows in (
        ("roma-8b-w2", "llama-3-8b", 9708),
        ("roma-3b-w4", "llama-3.2-3b", None),
    ):
        chip = load_chip(preset)
        assert chip.placement.embed == "off_chip"
        mp = Mapping(load_model(model), chip)
        assert all(m.kind != "embed" for m in mp.matrices)
        if rows is not None:
            assert mp.max_rows_per_cell == rows


# ---- embeddings: ROM bytes, SRAM, tied vs untied ----------------------------------------------


def _tiny(tied: bool) -> ModelSpec:
    return ModelSpec("tiny", 256, 512, 2, 4, 2, 64, 1000, tied)


def _linear_bytes(model: ModelSpec, q: QuantSpec) -> float:
    return model_rom_bytes(model, q, False, False)


@pytest.mark.parametrize("tied", [False, True])
def test_rom_bytes_by_placement(tied):
    model = _tiny(tied)
    q = QuantSpec(default=named_format("w4g128"), overrides={"embed": named_format("w8g128")})
    lin = _linear_bytes(model, q)
    table = model.vocab_size * model.hidden_size
    w4, w8 = named_format("w4g128").bits_per_weight, named_format("w8g128").bits_per_weight
    assert model_rom_bytes(model, q, True) == pytest.approx(lin + table * w4 / 8)
    assert model_rom_bytes(model, q, False, True) == pytest.approx(lin + table * w8 / 8)
    both = model_rom_bytes(model, q, True, True)
    if tied:  # stored once, at the LM head's format (no lm_head override: the embed one)
        assert [k for k, _ in rom_tables(model, q, True, True)] == ["lm_head"]
        assert both == pytest.approx(lin + table * w8 / 8)
    else:
        assert both == pytest.approx(lin + table * (w4 + w8) / 8)


def test_tied_table_formats_must_agree():
    model = _tiny(True)
    q = QuantSpec(
        default=named_format("w4g128"),
        overrides={"embed": named_format("w8g128"), "lm_head": named_format("w4g128")},
    )
    with pytest.raises(RomsimInputError):
        rom_tables(model, q, True, True)
    assert len(rom_tables(_tiny(False), q, True, True)) == 2  # untied: two tables, fine


@pytest.mark.parametrize("tied", [False, True])
def test_mapping_and_lookup_follow_placement(tied):
    model = _tiny(tied)
    base = {"mesh": {"rows": 3, "cols": 3, "vector_rows": 1}, "cell": {"cells_per_unit": 5}}

    def chip(lm, emb):
        return chip_from_dict({**base, "placement": {"lm_head": lm, "embed": emb}})

    kinds = {
        (lm, emb): [m.kind for m in Mapping(model, chip(lm, emb)).matrices if m.layer < 0]
        for lm in ("rom", "off_chip")
        for emb in ("rom", "sram", "off_chip")
    }
    assert kinds[("rom", "rom")] == (["lm_head"] if tied else ["embed", "lm_head"])
    assert kinds[("off_chip", "rom")] == ["embed"]
    assert kinds[("rom", "sram")] == ["lm_head"] and kinds[("off_chip", "off_chip")] == []
    mp = Mapping(model, chip("rom", "rom"))
    assert mp.lookup_tiles.kind == ("lm_head" if tied else "embed")
    assert Mapping(model, chip("rom", "sram")).lookup_tiles is None
    rd = embed_read_per_token(model, chip("rom", "rom"))
    lay = RomLayout.for_format(named_format("w4g128"), 64)
    assert rd.rom_words == pytest.approx(lay.dense_words(2))  # hidden 256 = 2 groups
    assert rd.bytes == rd.rom_words * 8 and rd.sram_read_bytes == 0


def test_embedding_in_sram_takes_lora_kv_room():
    model = load_model("smollm2-135m")
    chip = load_chip("roma-3b-w4")
    sram = chip.with_overrides(**{"placement.embed": "sram"})
    fp8 = chip.with_overrides(**{"placement.embed": "sram", "placement.embed_bits": 8})
    table = model.vocab_size * model.hidden_size
    assert embed_sram_bytes(model, chip) == 0
    assert embed_sram_bytes(model, sram) == 2 * table
    assert embed_sram_bytes(model, fp8) == table
    free = chip.sram.lora_kv_bytes - lora_bytes(model, chip) - 2 * table
    assert max_context_tokens(model, sram) == int(free // kv_bytes_per_token(model, chip))
    assert max_context_tokens(model, sram) < max_context_tokens(model, chip)
    rd = embed_read_per_token(model, sram)
    assert rd.sram_read_bytes == model.hidden_size * 2 and rd.rom_words == 0
    off = embed_read_per_token(model, chip)
    assert off.bytes == 0 and off.offchip_read_bytes == model.hidden_size * 2
    # an 8B table does not fit in 288 MiB at 16 bits: no room left for any KV
    m8 = load_model("llama-3-8b")
    assert (
        max_context_tokens(
            m8, load_chip("roma-8b-w2").with_overrides(**{"placement.embed": "sram"})
        )
        == 0
    )


def test_every_linear_kind_has_a_shape():
    model = _tiny(False)
    assert all(model.linear_shape(k) for k in LINEAR_KINDS)
