"""NF4 and ternary (2-bit and base-3) decode in the fused cell vs the golden model
``romsim.kernels.codebook`` (test data: ``sim/codebook_ref.py``), cocotb on Verilator and Icarus,
real SmolLM2-135M layer-0 weights.

``pytest sim -k "nf4 or ternary"``."""

from __future__ import annotations

import codebook_ref as cb
import numpy as np
import pytest
import rtl_cases
from romsim.rtl import simrun
from romsim.rtl.emit import emit_rowblock
from romsim.rtl.params import NF4_TABLE, nf4_fixed_table
from romsim.rtl.tile import Tile, matrix_qtensor

SIMS = [
    pytest.param(s, marks=pytest.mark.skipif(not simrun.available(s), reason=f"{s} missing"))
    for s in ("verilator", "icarus")
]
# (kind, packing, [group runs of the cells]): a 2-cell row-block of consecutive runs, the
# first starting mid-row
CASES = {
    "nf4": ("nf4", "bits", [(4, 22), (22, 40)]),
    "ternary": ("ternary", "bits", [(3, 11), (11, 19)]),
    "ternary_b3": ("ternary", "base3", [(2, 10), (10, 18)]),
}


def _matrix(kind: str, packing: str, matrix: str = "k"):
    """SmolLM2-135M layer-0 ``matrix`` (re-quantized at 8 bits, then dequantized: the float
    weights) in the format, and 3 real activation vectors (float)."""
    from types import SimpleNamespace

    from romsim.kernels.qmatmul import dequantize

    qt, src = matrix_qtensor(rtl_cases.MODEL, 0, matrix, 8, 128)
    w = dequantize(qt)[:, : qt.k]
    cm = cb.quantize(w, kind, packing)
    t = SimpleNamespace(model=rtl_cases.MODEL, layer=0, matrix=matrix, qt=qt, source=src)
    real = Tile.real_acts(t, 3)  # the Tile's real layer-0 inputs (no ROM words needed)
    if real is None:
        x = np.zeros((0, cm.k), np.float32)
    else:
        a, e = real
        x = (a.reshape(len(a), -1, t.qt.group_size) * np.ldexp(1.0, e)[..., None]).reshape(
            len(a), -1
        )[:, : cm.k]
    return cm, x, t.source


def _run(sim: str, case: str, tmp_path, build_dir, n_random: int = 3) -> dict:
    kind, packing, runs = CASES[case]
    cm, x, _ = _matrix(kind, packing)
    a, e = cb.acts(cm, x, n_random, seed=7)
    params = [cb.tile_params(cm, s0, s1) for s0, s1 in runs]
    words = [cb.tile_words(cm, s0, s1) for s0, s1 in runs]
    b = emit_rowblock(params, words, max_tokens=2, build_dir=build_dir, meta={"case": case})
    gold = [cb.golden(cm, a, e, s0, s1) for s0, s1 in runs]
    casef = tmp_path / "case.npz"
    simrun.write_case(
        casef,
        b,
        a,
        e,
        [g[0] for g in gold],
        [g[1] for g in gold],
        [g[2] for g in gold],
        [p.rom_rows + 6 for p in params],
    )
    return simrun.run_case(sim, b, casef, tmp_path / f"result_{sim}.json", tokens_per_run=2)


def test_nf4_fixed_table_and_golden_vs_float():
    """The codebook is the NF4 table to 2**-11; the golden partials sum to the float matmul of the
    dequantized NF4 / ternary weights within fp32 + codebook rounding."""
    tab = np.array(nf4_fixed_table()) / 1024.0
    assert np.abs(tab - np.array(NF4_TABLE)).max() <= 2**-11
    assert tab[0] == -1 and tab[15] == 1 and tab[7] == 0
    for kind, packing in (("nf4", "bits"), ("ternary", "bits"), ("ternary", "base3")):
        cm, x, _ = _matrix(kind, packing)
        a, e = cb.acts(cm, x, 2, seed=1)
        t, s, p = cb.golden(cm, a, e, 0, cm.n * cm.ng)
        y = p.view(np.float32).reshape(len(a), cm.n, cm.ng).sum(axis=2)
        xf = (a.reshape(len(a), cm.ng, -1) * np.ldexp(1.0, e)[..., None]).reshape(len(a), -1)
        ref = xf[:, : cm.k] @ cm.dequantize().T.astype(np.float64)
        err = np.abs(y - ref)
        bound = (
            2.0**-11
            * np.abs(xf[:, : cm.k])
            @ np.repeat(
                np.abs(cm.scale.astype(np.float64)).reshape(cm.n, -1), cm.group_size, axis=1
            )[:, : cm.k].T
            if kind == "nf4"
            else 0.0
        )
        assert (err <= bound + 1e-5 * (np.abs(ref) + 1)).all(), (kind, packing, err.max())


def test_ternary_base3_words_roundtrip():
    """Rule 3b: g160 = 32 bytes = four 64-bit words per group, 40 digits per word."""
    cm, _, _ = _matrix("ternary", "base3")
    p = cb.tile_params(cm, 0, 4)
    assert (p.words_per_group, p.lanes, p.rom_rows, p.n_meta_words) == (4, 40, 16, 0)
    w = cb.tile_words(cm, 0, 4)
    by = np.frombuffer(w.astype("<u8").tobytes(), np.uint8).astype(np.int64)
    d = np.stack([(by // 3**i) % 3 for i in range(5)], axis=1).reshape(-1)
    assert (d == cm.codes.reshape(-1)[: 4 * 160]).all()


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_codebook_cell_cocotb(sim, case, tmp_path, rtl_build_dir):
    """nf4 / ternary / ternary_b3 cells (2 cells, real weights, 3 real + 3 random vectors): every
    T, scale and fp32 partial equals the golden model; cycles = tokens * R + 6."""
    res = _run(sim, case, tmp_path, rtl_build_dir)
    assert res["mismatches"] == 0
    assert [r["cycles"] for r in res["runs"]] == res["cycles_expected"]


@pytest.mark.skipif(not simrun.available("icarus"), reason="icarus missing")
def test_ternary_cell_waves_icarus(tmp_path, rtl_build_dir, monkeypatch):
    """``ROMSIM_RTL_WAVES=1``: the run dumps an FST waveform (Icarus)."""
    monkeypatch.setenv("ROMSIM_RTL_WAVES", "1")
    res = _run("icarus", "ternary", tmp_path, rtl_build_dir, n_random=0)
    assert res["mismatches"] == 0
    waves = list(tmp_path.rglob("*.fst")) + list(rtl_build_dir.rglob("sim_icarus_waves/*.fst"))
    assert waves, "no waveform written"
