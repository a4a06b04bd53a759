"""Structural ROM arrays (romsim.rtl.brom): the B-ROM and the standard NOR-array ROM read back
their image bit for bit (Amaranth simulator; cocotb on Verilator and Icarus), a flipped stored bit
in the generated structure is caught, the fused cell with a structural ROM equals the kernels,
and the Yosys transistor / NAND2-eq path works (docs/rtl.md "B-ROM")."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from romsim.rtl import brom, simrun
from romsim.rtl.emit import emit_rowblock

rtl_cases = pytest.importorskip("rtl_cases")

ROWS = 128  # first 128 words of a real tile
WIDTH = 64
SIMS = [
    pytest.param(s, marks=pytest.mark.skipif(not simrun.available(s), reason=f"{s} missing"))
    for s in simrun.SIMULATORS
]
ICARUS = pytest.mark.skipif(not simrun.available("icarus"), reason="icarus missing")
# (row, column) flipped in the structure: row 4g + 2 = third row of group 21, so the (group,
# column) wire moves to another candidate line (B-ROM) / one OR term appears or vanishes (ROM)
CORRUPT = (86, 37)


@pytest.fixture(scope="module")
def real_words() -> list[int]:
    """The first 128 words of a real tile: SmolLM2-135M layer 0 q, cell 5 of the 64-cell test
    chip at 4 bits (375 words; re-quantized real weights, or the seeded fallback)."""
    t = rtl_cases.tiles_for(4, [(0, "q", 5, 8)])[0]
    return [int(w) for w in t.words[:ROWS]]


def _random_words(rows: int, width: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(0, 1 << width, rows, dtype=np.uint64)]


def _amaranth_read_all(rom, n: int) -> list[int]:
    from amaranth.sim import Simulator

    got: list[int] = []

    async def bench(ctx):
        for a in range(n):
            ctx.set(rom.addr, a)
            got.append(ctx.get(rom.data))

    sim = Simulator(rom)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("style", brom.ROM_STYLES)
@pytest.mark.parametrize("rows,width,seed", [(128, 64, 1), (37, 16, 2), (5, 8, 3), (4, 64, 4)])
def test_brom_amaranth_reads_image(style, rows, width, seed):
    """Every address of random images (also rows not a multiple of 4, one group) reads back."""
    words = _random_words(rows, width, seed)
    rom = brom.make_rom(style, words, width)
    assert _amaranth_read_all(rom, rows) == words


def test_brom_structure(real_words):
    """16 candidate lines generated once; each (group, column) names the candidate of its four
    stored bits; a flipped bit moves exactly one wire."""
    r = brom.BRom(real_words, WIDTH)
    assert r.n_groups == ROWS // 4 and r.patterns.shape == (ROWS // 4, WIDTH)
    g, c = 5, 11
    bits = [(real_words[4 * g + i] >> c) & 1 for i in range(4)]
    assert r.patterns[g, c] == sum(b << i for i, b in enumerate(bits))
    bad = brom.BRom(real_words, WIDTH, corrupt=CORRUPT)
    bad._MustUse__silence = True  # inspected, not elaborated
    diff = np.argwhere(bad.patterns != r.patterns)
    assert diff.tolist() == [[CORRUPT[0] // 4, CORRUPT[1]]]
    assert bad.patterns[21, 37] ^ r.patterns[21, 37] == 1 << (CORRUPT[0] % 4)
    v = brom.rom_verilog(r, "t")
    assert v.count("module ") == 3 and "$mem" not in v and "reg " not in v
    st = brom.image_stats(real_words, WIDTH)
    assert sum(st["pattern_hist"]) == ROWS // 4 * WIDTH
    assert st["devices"]["brom_per_group_col"] == st["bits"] // 4 + 64


@pytest.mark.parametrize("sim", SIMS)
def test_brom_structural_equals_image(sim, real_words, tmp_path, rtl_build_dir):
    res = brom.run_rom_case(sim, "brom", real_words, WIDTH, tmp_path, build_dir=rtl_build_dir)
    assert res["mismatches"] == 0 and res["words_checked"] == ROWS


@pytest.mark.parametrize("sim", SIMS)
def test_brom_standard_rom_equals_image(sim, real_words, tmp_path, rtl_build_dir):
    res = brom.run_rom_case(sim, "rom", real_words, WIDTH, tmp_path, build_dir=rtl_build_dir)
    assert res["mismatches"] == 0 and res["words_checked"] == ROWS


@pytest.mark.parametrize(
    "sim,style",
    [pytest.param(s.values[0], st, marks=s.marks) for s in SIMS for st in brom.ROM_STYLES],
)
def test_brom_corrupted_bit_is_caught(sim, style, real_words, tmp_path, rtl_build_dir):
    """One stored bit flipped in the generated structure (the reference image unchanged): the
    cocotb comparison must fail, at exactly that address and column."""
    with pytest.raises(SystemExit):
        brom.run_rom_case(
            sim,
            style,
            real_words,
            WIDTH,
            tmp_path,
            corrupt=CORRUPT,
            build_dir=rtl_build_dir,
            check=False,
        )
    res = json.loads((tmp_path / f"rom_result_{sim}.json").read_text())
    assert res["mismatches"] == 1 and res["bit_errors"] == 1
    assert res["first_mismatches"][0].startswith(f"addr {CORRUPT[0]}:")
    assert f"columns [{CORRUPT[1]}]" in res["first_mismatches"][0]


def _run_cell(sim, rom_style, tmp_path, build_dir, corrupt=None, check=True):
    """The fused cell holding a real tile (SmolLM2 layer 0 k, cell 5, 4 bits: 125 words) with
    its ROM as ``rom_style``; every T / scale / fp32 partial vs the kernels (the same golden and
    testbench, sim/cocotb_rowblock.py, that checks the behavioural "memory" cell)."""
    tiles = rtl_cases.tiles_for(4, [(0, "k", 5, 8)])
    acts = rtl_cases.acts_for(tiles[0], 2, seed=11)
    a, e = acts
    t = tiles[0]
    b = emit_rowblock(
        [t.params()],
        [t.words],
        max_tokens=2,
        build_dir=build_dir,
        rom_style=rom_style,
        rom_corrupt=corrupt,
        meta={"tiles": [t.spec], "source": t.source},
    )
    g = t.golden(a, e)
    case = tmp_path / "case.npz"
    simrun.write_case(case, b, a, e, [g[0]], [g[1]], [g[2]], [t.perf_cycles()])
    res = simrun.run_case(
        sim, b, case, tmp_path / f"result_{sim}.json", tokens_per_run=2, check=check
    )
    return res, t


@pytest.mark.parametrize(
    "sim,rom_style",
    [
        pytest.param(s, st, marks=pytest.mark.skipif(not simrun.available(s), reason=f"{s}"))
        for s, st in (("verilator", "brom"), ("icarus", "brom"), ("icarus", "rom"))
    ],
)
def test_brom_fused_cell_bit_exact(sim, rom_style, tmp_path, rtl_build_dir):
    res, t = _run_cell(sim, rom_style, tmp_path, rtl_build_dir)
    assert res["mismatches"] == 0
    assert res["words_checked"] == 5 * t.n_groups
    for run in res["runs"]:  # same cycles as the behavioural cell: perf model's charge
        assert run["cycles"] == t.perf_cycles(len(run["vectors"]))


@ICARUS
def test_brom_fused_cell_corrupted_bit_is_caught(tmp_path, rtl_build_dir):
    """A flipped stored bit in the cell's structural B-ROM (group 3's second code word, 8 words per group) makes
    the kernel comparison fail and name group 3."""
    with pytest.raises(SystemExit):
        _run_cell(
            "icarus", "brom", tmp_path, rtl_build_dir, corrupt=(0, 3 * 8 + 1, 37), check=False
        )
    res = json.loads((tmp_path / "result_icarus.json").read_text())
    assert res["mismatches"] >= 1
    assert any("group 3" in m for m in res["first_mismatches"]), res["first_mismatches"]


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys missing")
def test_brom_synth_counts_transistors():
    """Yosys 0.23 ``abc -g cmos2; stat -tech cmos`` gives a transistor estimate for both arrays;
    NAND2-eq from the gate weights; the standard ROM's OR terms grow with its 1-bits."""
    from romsim.rtl import synth

    if not synth.yosys_version().startswith(synth.YOSYS_PINNED):
        pytest.skip("pinned to yosys 0.23")
    words = _random_words(64, 16, 5)
    res = synth.rom_comparison(words, 16)
    for s in brom.ROM_STYLES:
        r = res[s]
        assert r["transistors"] > 0 and r["nand2_eq"] > 0 and r["bits"] == 1024
        recomputed = sum(synth.gate_weight(c) * n for c, n in r["yosys_cells"].items())
        assert r["nand2_eq"] == pytest.approx(recomputed, abs=0.1)
    sparse = synth.synth_rom("rom", [w & 0x0101 for w in words], 16)
    assert sparse.transistors < res["rom"]["transistors"]
    assert synth.parse_transistors("x\n   Estimated number of transistors:        42\n") == 42
