"""cocotb tests of the fused cell on Verilator and Icarus (run through cocotb_tools.runner).

Each test builds a row-block of real tiles (SmolLM2-135M layer weights, re-quantized; see
romsim.rtl.tile), drives real and random activations, and requires every partial-sum word to
equal the Numba/numpy integer kernel's bit for bit, and the cycle counter to equal what the
performance model charges for the tiles (fused cell) or that plus the documented 2 cycles
(conventional ROM + MAC).
"""

from __future__ import annotations

import pytest
from romsim.rtl import simrun

rtl_cases = pytest.importorskip("rtl_cases")

SIMS = [
    pytest.param(s, marks=pytest.mark.skipif(not simrun.available(s), reason=f"{s} missing"))
    for s in simrun.SIMULATORS
]
# (layer, matrix, cell, cells_per_unit): one aligned tile of the default 64-cell chip and one
# uneven tile of the 56-cell chip that starts mid-row, sharing K = 576.
CI_TILES = [(0, "k", 5, 8), (0, "v", 11, 7)]


def _check_cycles(res, tiles, extra=0):
    for run in res["runs"]:
        n = len(run["vectors"])
        perf = max(t.perf_cycles(n) for t in tiles)
        assert run["cycles"] == perf + extra, (run, perf)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fused_rowblock_matches_kernel(sim, bits, tmp_path, rtl_build_dir):
    tiles = rtl_cases.tiles_for(bits, CI_TILES)
    acts = rtl_cases.acts_for(tiles[0], 3 if sim == "icarus" else 9, seed=bits)
    res, _ = rtl_cases.run_rowblock(sim, tiles, acts, tmp_path, build_dir=rtl_build_dir)
    assert res["mismatches"] == 0
    assert res["words_checked"] == len(acts) * sum(t.n_groups for t in tiles)
    _check_cycles(res, tiles)


@pytest.mark.parametrize("sim", SIMS)
def test_conventional_matches_kernel(sim, tmp_path, rtl_build_dir):
    tiles = rtl_cases.tiles_for(4, CI_TILES[:1])
    acts = rtl_cases.acts_for(tiles[0], 3, seed=7)
    res, _ = rtl_cases.run_rowblock(
        sim, tiles, acts, tmp_path, style="conventional", build_dir=rtl_build_dir
    )
    assert res["mismatches"] == 0
    _check_cycles(res, tiles, extra=2)


@pytest.mark.parametrize(
    "sim,which",
    [
        pytest.param(s, w, marks=pytest.mark.skipif(not simrun.available(s), reason=f"{s} missing"))
        for s, w in (("verilator", "code"), ("icarus", "meta"))
    ],
)
def test_corrupted_rom_word_fails(sim, which, tmp_path, rtl_build_dir):
    """The comparison can fail: one flipped bit in one ROM word (a code word, or the zero point
    in a metadata word) must give mismatching output words and a failing cocotb test."""
    tiles = rtl_cases.tiles_for(4, CI_TILES[:1])
    p = tiles[0].params()
    if which == "code":
        corrupt = (0, 3 * p.words_per_group + 1, 1 << 37)  # group 3, second word
    else:
        corrupt = (0, p.n_groups * p.words_per_group, 1 << 16)  # zero point of group 0
    acts = rtl_cases.acts_for(tiles[0], 2, seed=3)
    with pytest.raises(SystemExit):
        rtl_cases.run_rowblock(
            sim, tiles, acts, tmp_path, corrupt=corrupt, check=False, build_dir=rtl_build_dir
        )
    import json

    res = json.loads((tmp_path / f"result_{sim}.json").read_text())
    assert res["mismatches"] >= 1
    want = "group 3" if which == "code" else "group 0"
    assert any(want in m for m in res["first_mismatches"]), res["first_mismatches"]


def test_full_layer(request, tmp_path, rtl_build_dir):
    """``pytest sim --full``: every tile of one real layer, a matrix unit (8 cells) per
    row-block, on Verilator."""
    if not request.config.getoption("--full"):
        pytest.skip("needs --full")
    if not simrun.available("verilator"):
        pytest.skip("verilator missing")
    from romsim.modelspec import LINEAR_KINDS

    layer = int(request.config.getoption("--full-layer"))
    bits_list = [int(b) for b in request.config.getoption("--full-bits").split(",")]
    for bits in bits_list:
        for matrix in LINEAR_KINDS:
            for unit in range(8):
                specs = [(layer, matrix, 8 * unit + c, 8) for c in range(8)]
                tiles = rtl_cases.tiles_for(bits, specs)
                acts = rtl_cases.acts_for(tiles[0], 5, seed=unit)
                wd = tmp_path / f"w{bits}_{matrix}_{unit}"
                wd.mkdir()
                res, _ = rtl_cases.run_rowblock(
                    "verilator", tiles, acts, wd, build_dir=rtl_build_dir
                )
                assert res["mismatches"] == 0, (bits, matrix, unit)
                _check_cycles(res, tiles)
