"""cocotb tests of the fused cell on Verilator and Icarus (run through cocotb_tools.runner).

Each test builds a row-block of real tiles (SmolLM2-135M layer weights, re-quantized; see
romsim.rtl.tile), drives real and random activations (int8 mantissas + per-group exponents), and
requires every output word -- integer T, scale bits and the fp32 partial -- to equal the
Numba/numpy integer kernel's bit for bit, and the cycle counter to equal what the performance
model charges for the tiles (fused cell) or that plus the documented 2 cycles (conventional ROM +
MAC). The 4- and 8-bit runs are row-blocks of 4 consecutive cells of one matrix with the unit's
fp32 row sums, checked against the kernel's GEMV (``qmatmul(path="int")``).
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
# row-blocks of 4 consecutive cells: k on the 64-cell chip (3 whole rows per cell: every row sum
# is the kernel's own, bit for bit) and v on the 56-cell chip (runs of 17/18 groups of 5-group
# rows: rows split over two cells, summed in the documented order of dequant_ref.rowblock_sums)
ROWBLOCKS = {8: [(0, "k", c, 8) for c in range(4, 8)], 4: [(0, "v", c, 7) for c in range(10, 14)]}


def _kernel_rows(tiles, acts):
    """The kernel GEMV (qmatmul int path) for the rows the row-block touches, and per row
    whether the block holds all of it; plus sum |p| per row (for the reassociation bound)."""
    import numpy as np
    from romsim.kernels.dequant_ref import group_partials
    from romsim.kernels.qmatmul import _pow2_f32, qmatmul

    a, e = acts
    qt = tiles[0].qt
    ng = qt.n_groups
    s = a.reshape(a.shape[0], ng, -1).sum(axis=2, dtype=np.int32)
    y = qmatmul(qt, np.zeros((a.shape[0], qt.k), np.float32), path="int", act=(a, s, _pow2_f32(e)))
    g0, g1 = tiles[0].start, tiles[-1].stop
    r0, r1 = g0 // ng, (g1 - 1) // ng
    whole = np.array([g0 <= r * ng and (r + 1) * ng <= g1 for r in range(r0, r1 + 1)])
    _, p = group_partials(qt, a, e, g0 - g0 % ng, (r1 + 1) * ng)
    mag = np.abs(p.astype(np.float64)).reshape(a.shape[0], -1, ng).sum(axis=2)
    return y[:, r0 : r1 + 1], whole, mag


def _check_cycles(res, tiles, extra=0):
    for run in res["runs"]:
        n = len(run["vectors"])
        perf = max(t.perf_cycles(n) for t in tiles)
        assert run["cycles"] == perf + extra, (run, perf)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fused_rowblock_matches_kernel(sim, bits, tmp_path, rtl_build_dir):
    import numpy as np

    rows = bits in ROWBLOCKS
    tiles = rtl_cases.tiles_for(bits, ROWBLOCKS[bits] if rows else CI_TILES)
    acts = rtl_cases.acts_for(tiles[0], 3 if sim == "icarus" else 9, seed=bits)
    res, _ = rtl_cases.run_rowblock(
        sim, tiles, acts, tmp_path, row_sums=rows, build_dir=rtl_build_dir
    )
    assert res["mismatches"] == 0
    assert res["words_checked"] == len(acts[0]) * sum(t.n_groups for t in tiles)
    _check_cycles(res, tiles)
    if not rows:
        return
    # the RTL's row sums (= dequant_ref.rowblock_sums, checked bit for bit in the bench) vs the
    # kernel GEMV: rows held by one cell bit-exact, rows split over two cells within the
    # reassociation bound 4 * eps32 * sum|p|
    from romsim.kernels.dequant_ref import rowblock_sums

    assert res["rows_checked"] > 0 and res["row_mismatches"] == 0
    _, got = rowblock_sums(tiles[0].qt, *acts, [(t.start, t.stop) for t in tiles])
    ker, whole, mag = _kernel_rows(tiles, acts)
    ng = tiles[0].qt.n_groups
    single = np.array(
        [
            any(t.start <= r * ng and (r + 1) * ng <= t.stop for t in tiles)
            for r in range(tiles[0].start // ng, (tiles[-1].stop - 1) // ng + 1)
        ]
    )
    assert np.array_equal(got[:, single].view(np.uint32), ker[:, single].view(np.uint32))
    split = whole & ~single
    err = np.abs(got[:, split].astype(np.float64) - ker[:, split])
    assert np.all(err <= 4 * np.finfo(np.float32).eps * mag[:, split])
    if bits == 4:
        assert split.sum() >= 2  # the uneven block really has rows split over two cells


@pytest.mark.parametrize("sim", SIMS)
def test_conventional_matches_kernel(sim, tmp_path, rtl_build_dir):
    tiles = rtl_cases.tiles_for(4, CI_TILES[:1])
    acts = rtl_cases.acts_for(tiles[0], 3, seed=7)
    res, _ = rtl_cases.run_rowblock(
        sim, tiles, acts, tmp_path, style="conventional", build_dir=rtl_build_dir
    )
    assert res["words_checked"] == len(acts[0]) * tiles[0].n_groups
    assert res["mismatches"] == 0
    _check_cycles(res, tiles, extra=2)


@pytest.mark.parametrize(
    "sim,which",
    [
        pytest.param(s, w, marks=pytest.mark.skipif(not simrun.available(s), reason=f"{s} missing"))
        for s, w in (("icarus", "code"), ("icarus", "meta"))
    ],
)
def test_corrupted_rom_word_fails(sim, which, tmp_path, rtl_build_dir):
    """The comparison can fail: one flipped bit in one ROM word (a code word, or the zero point
    in a metadata word) must give mismatching output words and a failing cocotb test (on Icarus:
    its builds are instant; the comparison is the same Python testbench on both simulators)."""
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


@pytest.mark.parametrize(
    "sim",
    [
        pytest.param(
            "icarus",
            marks=pytest.mark.skipif(not simrun.available("icarus"), reason="icarus missing"),
        )
    ],
)
def test_multimatrix_cell_walks_layer(sim, tmp_path, rtl_build_dir):
    """A cell whose ROM holds its whole cell_layout (the 7 matrices of a layer, 64-cell chip)
    runs each matrix under ``sel``: every partial equals the kernels', cycles = R_m + 6."""
    res, tiles = rtl_cases.run_multicell(sim, 5, 4, tmp_path, build_dir=rtl_build_dir)
    assert res["mismatches"] == 0
    assert [r["matrix"] for r in res["runs"]] == [t.mt.name for t in tiles]
    assert len(tiles) == 7
    for r, t in zip(res["runs"], tiles, strict=True):
        assert r["cycles"] == t.perf_cycles(1) and r["words"] == t.n_groups
