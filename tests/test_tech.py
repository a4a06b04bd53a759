"""The technology table, the components and the predicted energy (docs/constants.md,
docs/architecture.md): values equal the table, areas monotone in the node, energy is the sum
over actions, unknown actions raise, operating points behave."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from romsim.area.energy import action_energy_j, dynamic_energy_j
from romsim.area.model import area_breakdown_mm2, blocks, leakage_w
from romsim.cli import main
from romsim.config import load_chip
from romsim.estimate import estimate
from romsim.modelspec import load_model
from romsim.perf.actions import ACTIONS
from romsim.perf.ops import Op
from romsim.tech import node, nodes_nm

ROOT = Path(__file__).resolve().parents[1]
TABLE = tomllib.loads(resources.files("romsim.tech").joinpath("nodes.toml").read_text())


@pytest.mark.parametrize("nm", nodes_nm())
def test_per_node_values_equal_the_table(nm):
    n, row = node(nm), TABLE["node"][str(nm)]
    assert n.sram_bitcell_um2 == row["sram_bitcell_um2"]
    assert n.nand2_um2 == row["nand2_um2"]
    assert n.vdd_v == row["vdd_v"]
    for key in ("sram_bitcell_um2", "nand2_um2", "vdd_v"):
        assert row[f"{key}_src"].strip()  # every value has its source


def test_required_nodes_are_covered():
    assert set(nodes_nm()) >= {65, 40, 28, 22, 16, 12, 7, 6, 5, 3, 2}


def test_sram_rom_logic_area_monotone_in_node():
    """Smaller node, smaller (or equal) bit cells and gates; SRAM, ROM and logic each follow
    their own published curve (the SRAM cell stalls at N3 while logic keeps shrinking)."""
    ns = [node(nm) for nm in sorted(nodes_nm())]  # 2 nm first
    for a, b in zip(ns, ns[1:], strict=False):
        assert a.sram_bitcell_um2 <= b.sram_bitcell_um2
        assert a.rom_bitcell_um2 <= b.rom_bitcell_um2
        assert a.nand2_um2 <= b.nand2_um2
    assert node(3).sram_bitcell_um2 == node(5).sram_bitcell_um2  # SRAM stalled
    assert node(3).nand2_um2 < node(5).nand2_um2  # logic did not
    chip = load_chip("roma-3b-w4")
    areas = [
        area_breakdown_mm2(chip.with_overrides(**{"tech.process_nm": nm}))
        for nm in sorted(nodes_nm())
    ]
    for key in ("fused_cells", "lora_kv_sram", "h_compute"):
        seq = [a[key] for a in areas]
        assert seq == sorted(seq), key


OPS = st.dictionaries(st.sampled_from(ACTIONS), st.floats(0, 1e12, allow_nan=False), max_size=9)


@settings(max_examples=50, deadline=None)
@given(counts=OPS, nm=st.sampled_from(nodes_nm()))
def test_energy_is_the_sum_over_actions(counts, nm):
    chip = load_chip("roma-3b-w4").with_overrides(**{"tech.process_nm": nm})
    per = action_energy_j(chip)
    got = dynamic_energy_j(chip, counts)
    assert set(got) == set(counts)
    for k, v in counts.items():
        assert got[k] == pytest.approx(v * per[k], rel=1e-12, abs=0)


def test_every_action_is_priced_once_and_unknown_keys_raise():
    chip = load_chip("roma-3b-w4")
    assert set(action_energy_j(chip)) == set(ACTIONS)
    with pytest.raises(KeyError, match="unknown action"):
        dynamic_energy_j(chip, {"rom_reads": 1.0})
    with pytest.raises(KeyError, match="unknown action"):
        Op("x", "x", 0).count("dram_bytes", 1.0)


def test_estimate_energy_is_actions_plus_leakage():
    chip = load_chip("roma-3b-w4")
    model = load_model(chip.model)
    e = estimate(model, chip, 64, 32, per_layer=False)
    t_tok = 1 / e.decode_tokens_per_s
    assert e.energy_per_token_j == pytest.approx(
        sum(e.energy_breakdown_j.values()) + e.leakage_w * t_tok, rel=1e-9
    )


CONFIGS = {
    "ternary": 'base = "roma-8b-w2"\nquant = "ternary"\n',
    "mix36": 'base = "roma-3b-w4"\nquant = "w3g128+w6x0.25"\n',
    "logic": 'base = "roma-3b-w4"\n[rom]\nstyle = "logic"\n',
    "rom-macro": 'base = "roma-3b-w4"\n[rom]\nstyle = "rom"\n',
    "node2": 'base = "roma-3b-w4"\n[tech]\nprocess_nm = 2\n',
    "node3": 'base = "roma-3b-w4"\n[tech]\nprocess_nm = 3\n',
    "node65": 'base = "roma-3b-w4"\n[tech]\nprocess_nm = 65\nclock_hz = 200e6\n',
    "batch8": 'base = "roma-3b-w4"\n[operating]\nbatch = 8\n[cell]\nweight_reuse_tokens = 8\n',
    "gating": 'base = "roma-3b-w4"\n[operating]\npower_gating = true\n',
    "no-clock-gating": 'base = "roma-3b-w4"\n[operating]\nclock_gating = false\n',
}


@pytest.mark.parametrize("name", CONFIGS)
def test_estimate_config_works(tmp_path, capsys, name):
    p = tmp_path / f"{name}.toml"
    p.write_text(CONFIGS[name])
    assert main(["estimate", "--config", str(p), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["decode_tokens_per_s"] > 0 and d["energy_per_token_j"] > 0 and d["area_mm2"] > 0


def test_rom_styles_compare_in_one_command(capsys):
    assert main(["estimate", "--compare-styles", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d) == {"brom", "rom", "logic"}
    assert d["brom"]["area_mm2"] < d["rom"]["area_mm2"]


def test_logic_rom_area_follows_the_one_bits():
    chip = load_chip("roma-3b-w4")
    dense = chip.with_overrides(**{"rom.style": "logic", "rom.logic_zero_bit_fraction": 0.2})
    sparse = chip.with_overrides(**{"rom.style": "logic", "rom.logic_zero_bit_fraction": 0.8})
    a_d = area_breakdown_mm2(dense)["fused_cells"]
    a_s = area_breakdown_mm2(sparse)["fused_cells"]
    assert a_s < a_d  # fewer 1-bits, fewer gates
    # measured on real weights when not given
    from romsim.rom.bitstats import zero_bit_fraction

    f = zero_bit_fraction(chip.quant.default)
    assert 0.3 < f < 0.8


def test_batch_shares_rom_reads_and_keeps_kv_per_sequence():
    base = load_chip("roma-3b-w4")
    model = load_model(base.model)
    b8 = base.with_overrides(**{"operating.batch": 8, "cell.weight_reuse_tokens": 8})
    e1 = estimate(model, base, 128, 64, per_layer=False)
    e8 = estimate(model, b8, 128, 64, per_layer=False)
    assert e8.batch == 8
    assert e8.decode_tokens_per_s_total > e1.decode_tokens_per_s_total  # more tokens per step
    assert e8.decode_tokens_per_s < e1.decode_tokens_per_s  # each user waits longer
    assert e8.energy_per_token_j < e1.energy_per_token_j  # ROM reads shared
    assert e8.kv_bytes == pytest.approx(8 * e1.kv_bytes, rel=1e-6)
    # without operand registers the batch re-reads every word
    r1 = base.with_overrides(**{"operating.batch": 8})
    e8r = estimate(model, r1, 128, 64, per_layer=False)
    assert e8r.energy_breakdown_j["rom_bits"] > e8.energy_breakdown_j["rom_bits"]


def test_power_gating_cuts_idle_leakage_at_an_area_cost():
    chip = load_chip("roma-3b-w4")
    gated = chip.with_overrides(**{"operating.power_gating": True})
    idle = {"rom": 0.1, "h_mac": 0.05}
    assert leakage_w(gated, idle) < leakage_w(chip, idle)
    assert sum(b.area_mm2 for b in blocks(gated)) > sum(b.area_mm2 for b in blocks(chip))


def test_off_chip_lm_head_is_charged():
    chip = load_chip("roma-3b-w4")  # lm_head off chip in the preset
    model = load_model(chip.model)
    e = estimate(model, chip, 16, 16, per_layer=False)
    assert e.energy_breakdown_j["offchip_bytes"] > 0
    slow = chip.with_overrides(**{"offchip.bandwidth_bytes_per_s": 1e6})
    assert estimate(model, slow, 16, 16, per_layer=False).decode_tokens_per_s < (
        e.decode_tokens_per_s
    )


def test_clock_check_warns_not_refuses():
    chip = load_chip("roma-3b-w4")
    model = load_model(chip.model)
    fast = chip.with_overrides(**{"tech.process_nm": 65, "tech.clock_hz": 5e9})
    e = estimate(model, fast, 8, 8, per_layer=False)
    assert "FO4" in e.clock_warning
    assert estimate(model, chip, 8, 8, per_layer=False).clock_warning == ""


def test_unknown_node_is_one_line(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text('base = "roma-3b-w4"\n[tech]\nprocess_nm = 10\n')
    assert main(["estimate", "--config", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tech.process_nm" in err[0] and "65" in err[0]


def test_constants_doc_is_current():
    from romsim.tech.constants_doc import render_constants

    assert (ROOT / "docs" / "constants.md").read_text() == render_constants(), (
        "regenerate: romsim constants --write docs/constants.md"
    )


def test_no_energy_is_fitted():
    from romsim.validation import _NOTES

    fitted = _NOTES.split("## Fitted constants")[1].split("\n\n")[2]
    rows = [r for r in fitted.splitlines() if r.startswith("| `")]
    assert len(rows) <= 4
    assert not any("energy" in r.lower() or "_pj" in r.lower() or "power" in r for r in rows)


# ---- the two energy anchors and the clock (issue 10: energy predicted from published values)
_OPS = {  # label -> the Node call that gives that energy
    "int8_mult_pj": lambda n: n.int_mult_pj(8, 8),
    "int32_add_pj": lambda n: n.int_add_pj(32),
    "fp16_mac": lambda n: n.fp_mac_pj(16),
    "fp32_mac": lambda n: n.fp_mac_pj(32),
}


def test_energies_equal_the_published_7nm_anchor():
    a = TABLE["anchor7"]
    n = node(7)
    assert n.int_mult_pj(8, 8) == pytest.approx(a["int8_mult_pj"], rel=1e-12)
    assert n.int_add_pj(32) == pytest.approx(a["int32_add_pj"], rel=1e-12)
    assert n.fp_mac_pj(16) == pytest.approx(a["fp16_mult_pj"] + a["fp16_add_pj"], rel=1e-12)
    assert n.fp_mac_pj(32) == pytest.approx(a["fp32_mult_pj"] + a["fp32_add_pj"], rel=1e-12)
    for size, key in ((8 << 10, "8kb"), (32 << 10, "32kb"), (1 << 20, "1mb")):
        got = n.sram_read_pj_per_bit(size) * 64
        assert got == pytest.approx(a[f"sram_{key}_read_pj_per_64b"], rel=1e-12)
    assert n.flop_clock_fj == pytest.approx(a["dff_clock_fj"], rel=1e-12)
    assert n.icg_clock_fj == pytest.approx(a["icg_clock_fj"], rel=1e-12)


def test_energy_at_the_45nm_anchor_is_horowitz():
    """45 nm is not a table node; the rule at r = 1 returns Horowitz's values exactly."""
    from romsim.tech import Node

    a = TABLE["anchor"]
    n45 = Node(45, a["sram_bitcell_um2"], a["nand2_um2"], a["vdd_v"], 20.0, 0.1, {})
    assert n45.int_mult_pj(8, 8) == pytest.approx(a["int8_mult_pj"], rel=1e-12)
    assert n45.int_add_pj(32) == pytest.approx(a["int32_add_pj"], rel=1e-12)
    assert n45.sram_read_pj_per_bit(32 << 10) * 64 == pytest.approx(
        a["sram_32kb_read_pj_per_64b"], rel=1e-12
    )


@pytest.mark.parametrize("what", sorted(_OPS) + ["sram_8kb", "sram_1mb", "flop_clock"])
def test_energies_fall_with_the_node(what):
    def value(nm: int) -> float:
        n = node(nm)
        if what == "sram_8kb":
            return n.sram_read_pj_per_bit(8 << 10)
        if what == "sram_1mb":
            return n.sram_read_pj_per_bit(1 << 20)
        if what == "flop_clock":
            return n.flop_clock_fj
        return _OPS[what](n)

    vals = [value(nm) for nm in nodes_nm()]  # largest node first
    assert all(b <= a * (1 + 1e-12) for a, b in zip(vals, vals[1:], strict=False)), vals


def test_sram_energy_accepts_arrays_like_scalars():
    import numpy as np

    n = node(16)
    sizes = np.array([1 << 9, 8 << 10, 77 << 10, 1 << 20, 64 << 20], dtype=float)
    arr = n.sram_read_pj_per_bit(sizes)
    assert arr == pytest.approx([n.sram_read_pj_per_bit(float(s)) for s in sizes], rel=1e-12)


@pytest.mark.parametrize("gating", [False, True])
def test_clock_cycle_energy_is_the_flops_or_their_clock_gates(gating):
    from romsim.area import tech as T

    chip = load_chip("roma-3b-w4").with_overrides(**{"operating.clock_gating": gating})
    n = node(chip.tech.process_nm)
    bl = blocks(chip)
    flops = sum(b.flops for b in bl)
    assert flops > chip.n_cells * 500  # the fused cells' synthesized flops dominate
    want = flops / T.ICG_FLOPS * n.icg_clock_fj if gating else flops * n.flop_clock_fj
    assert action_energy_j(chip)["clock_cycles"] == pytest.approx(want * 1e-15, rel=1e-12)


def test_clock_gating_moves_the_clock_into_the_work():
    """Gated, a flop is clocked only in the cycles its block works (priced in that block's
    action); ungated, every cycle: an idle-heavy step costs more without gating, and the clock's
    per-cycle price falls by the clock gates' share."""
    chip = load_chip("roma-3b-w4")
    model = load_model(chip.model)
    free = chip.with_overrides(**{"operating.clock_gating": False})
    eg, ef = action_energy_j(chip), action_energy_j(free)
    assert eg["l_macs"] > ef["l_macs"] and eg["h_macs"] > ef["h_macs"]
    assert eg["clock_cycles"] < ef["clock_cycles"] / 10
    a = estimate(model, chip, 64, 32, per_layer=False)
    b = estimate(model, free, 64, 32, per_layer=False)
    assert a.energy_per_token_j < b.energy_per_token_j
    assert a.decode_tokens_per_s == b.decode_tokens_per_s  # timing unchanged


def test_datapath_activity_is_the_measured_real_data_unit_delay_value():
    """datapath_activity (S) is the gate-level simulation of the synthesized cell on the real
    SmolLM2 tile with a unit delay per gate (romsim/area/synth_activity.json): above the
    zero-delay count of the same data, below the random-data unit-delay count, and within 15 %
    of the footing relative to a 32-bit adder measured alike."""
    from romsim.area.model import datapath_activity

    act = json.loads(resources.files("romsim.area").joinpath("synth_activity.json").read_text())
    assert set(act["results"]) >= {"2", "3", "4", "8"}
    for ref in act["reference_adder"].values():
        assert ref["mismatches"] == 0
    for b, r in act["results"].items():
        assert r["nand2_eq_ratio"] == pytest.approx(1.0, abs=0.01)
        rd = r["real_data"]
        assert rd["partial_mismatches"] == 0 and rd["unit_delay"]["partial_mismatches"] == 0
        a = datapath_activity(int(b))
        assert a == rd["unit_delay"]["activity_all_nand2"]
        assert rd["activity_all_nand2"] < a < r["unit_delay"]["activity_all_nand2"]
        assert rd["unit_delay"]["equivalent_activity"] == pytest.approx(a, rel=0.15)
    # widths never simulated take the nearest (ties: the wider)
    assert datapath_activity(5) == datapath_activity(4)
    assert datapath_activity(6) == datapath_activity(8)
    assert datapath_activity(1) == datapath_activity(2)


def test_leakage_follows_the_asap7_fins_and_nand2():
    """Leakage constants come from the 7 nm library's off fins and NAND2 ([anchor7]) by the rules
    in romsim/area/tech.py, not chosen."""
    from romsim.area import tech as T

    a7 = TABLE["anchor7"]
    sram_cell_w, logic_w_mm2, rom_w_mm2 = (
        T.SRAM_CELL_LEAK_W,
        T.LOGIC_LEAK_W_PER_MM2_7NM,
        T.ROM_LEAK_W_PER_MM2_7NM,
    )
    assert sram_cell_w == pytest.approx(
        (a7["pfin_off_leak_pw"] + 2 * a7["nfin_off_leak_pw"]) * 1e-12
    )
    assert logic_w_mm2 == pytest.approx(
        a7["nand2_leak_pw"] * 1e-12 * T.LOGIC_UTILISATION / (node(7).nand2_um2 * 1e-6)
    )
    assert rom_w_mm2 == pytest.approx(
        a7["nfin_off_leak_pw"] * 1e-12 / (node(7).rom_bitcell_um2 * 1e-6)
    )
    for k in ("nfin_off_leak_pw", "pfin_off_leak_pw", "nand2_leak_pw"):
        assert "ASAP7" in a7[f"{k}_src"]


def test_sram_leaks_by_its_cells_and_periphery_and_cells_by_rom_and_compute():
    from romsim.area import tech as T
    from romsim.area.model import cell_area_mm2

    chip = load_chip("roma-3b-w4")  # 7 nm: leakage_scale 1
    b = {x.name: x for x in blocks(chip)}
    bits = chip.sram.lora_kv_bytes * 8
    sram = b["lora_kv_sram"]
    periph = sram.area_mm2 - bits * node(7).sram_bitcell_um2 * 1e-6
    assert 0 < periph < sram.area_mm2
    want = bits * T.SRAM_CELL_LEAK_W + periph * T.LOGIC_LEAK_W_PER_MM2_7NM
    assert sram.leakage_w == pytest.approx(want)
    cell = cell_area_mm2(chip)
    want_cell = (
        cell["rom_array_mm2"] * T.ROM_LEAK_W_PER_MM2_7NM
        + cell["compute_mm2"] * T.LOGIC_LEAK_W_PER_MM2_7NM
    )
    assert b["fused_cells"].leakage_w_each == pytest.approx(want_cell)


def test_leakage_rises_with_the_junction_temperature_by_the_neurosim_table():
    from romsim.tech import leakage_temperature_factors

    a7 = TABLE["anchor7"]
    assert leakage_temperature_factors(25.0) == (1.0, 1.0)
    fn, fp = leakage_temperature_factors(126.85)  # 400 K, the table's end
    assert fn == pytest.approx(a7["ioff_n_ua_per_um"][-1] / a7["ioff_n_ua_per_um"][0])
    assert fp == pytest.approx(a7["ioff_p_ua_per_um"][-1] / a7["ioff_p_ua_per_um"][0])
    chip = load_chip("roma-3b-w4")
    temps = (25.0, 50.0, 85.0, 125.0)
    leaks = [leakage_w(chip.with_overrides(**{"operating.junction_temp_c": t})) for t in temps]
    assert all(b > a for a, b in zip(leaks, leaks[1:], strict=False))
    assert 10 < leaks[2] / leaks[0] < 40  # 85 C: N fins x15.6, P fins x33.7


def test_junction_temperature_outside_the_table_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "hot.toml"
    cfg.write_text('base = "roma-3b-w4"\n[operating]\njunction_temp_c = 150\n')
    assert main(["estimate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "junction_temp_c" in err and "150" in err and len(err.strip().splitlines()) == 1


def test_planar_nodes_follow_their_own_flatter_temperature_curve():
    from romsim.tech import leakage_temperature_factors

    t = TABLE["ioff_temp"]
    fn65, fp65 = leakage_temperature_factors(126.85, 65)
    assert fn65 == pytest.approx(t["n_65"][-1] / t["n_65"][0])
    assert fp65 == pytest.approx(t["p_65"][-1] / t["p_65"][0])
    assert leakage_temperature_factors(85.0, 40) == leakage_temperature_factors(85.0, 45)
    assert leakage_temperature_factors(85.0, 16) == leakage_temperature_factors(85.0, 7)
    assert leakage_temperature_factors(85.0, 65)[0] < leakage_temperature_factors(85.0, 7)[0]
