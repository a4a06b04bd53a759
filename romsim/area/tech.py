"""Node-independent design constants of the area and energy model. Per-node physics (bit cells,
gate area, supply, energies) lives in :mod:`romsim.tech` (``romsim/tech/nodes.toml``); these are
the paper's architecture figures and textbook gate counts. Symbols: (P) ROMA paper via
../shared/DESIGN.md, (L) literature, (C) chosen, (S) synthesis run; docs/constants.md lists them.
"""

from __future__ import annotations

import math

import numpy as np

from romsim.tech import Node, anchor7, leakage_temperature_factors, node
from romsim.units import UM2_PER_MM2

# --- memory arrays (ratios and the 7 nm compiler's efficiency curve) -------------------------
BROM_AREA_FACTOR = 0.60  # (P) B-ROM: ~40 % less area than a standard ROM
BROM_READ_FACTOR = 0.60  # (P) B-ROM read: the 16 candidates are generated once per 4-row group
#                         and ~1/4 of the transistors switch; taken equal to the area factor (C)
BROM_TRANSISTOR_FACTOR = 0.25  # (P) about 1/4 of the transistors of a standard ROM: holds as
#   a device count against one device per bit position (0.251-0.254, rtl/brom.py); against a
#   NOR ROM with devices at the 1-bits only it is 1/(4 f1) ~ 0.56, and synthesized to gates the
#   B-ROM is 0.76-1.04x the standard ROM (docs/rtl.md, "Structural ROM arrays"). The area
#   factor above stays the paper's figure: no transistor count derives 0.6.
# Array efficiency (bit-cell area / macro area) of the paper's 7 nm compiler, N x 64 macros:
ROM_EFF_1K, ROM_EFF_8K = 0.194, 0.520  # (P)
SRAM_EFF_1K, SRAM_EFF_8K = 0.354, 0.694  # (P)
COMPILER_NODE_NM = 7  # (P) the node of those compiler figures
COMPILER_WORD_BITS = 64  # (P) "1K- to 8K-deep x 64 macros"

# --- logic -------------------------------------------------------------------------------------
NAND2_UM2 = node(COMPILER_NODE_NM).nand2_um2  # the 7 nm NAND2 of the node table (rtl synth um2)
LOGIC_UTILISATION = 0.70  # (C) placement density of standard-cell blocks: a typical row
#                           utilisation of place-and-route flows (60-80 %)
# NAND2-equivalent gate counts (L: textbook array-multiplier / adder estimates; the fused cell's
# own count comes from Yosys synthesis, romsim/area/synth_calibration.json):
GATES_INT_MAC_4x8 = 260  # 4x8 multiplier (~32 FA) + 32-bit accumulate share
GATES_DEQUANT = 2500  # fp16 scale multiply + zero correction per cell
# (C) NF4's 16-entry codebook decode per MAC lane: a 16:1 mux of an 8-bit fixed-point entry
# (15 MUX2 x 8 bits ~ 280 NAND2) plus the wider 8x8 multiplier it feeds (+ one 4x8's 260)
GATES_CODEBOOK16_DECODE = 540
GATES_ADDER32 = 224  # 32-bit adder (ripple/carry-select mix)
GATES_FP16_MAC = 1100  # fp16/fp8 multiply-add in the H-Unit and vector lanes
GATES_SFU = 9000  # exp / rsqrt / sigmoid lane (piecewise polynomial)
GATES_ROUTER_PER_PORT_BIT = 12  # buffer flops + crossbar mux per port per link bit
GATES_PER_FLOP = 4.522 / 0.798  # (L) NanGate 45 nm DFF_X1 / NAND2_X1 area (rtl/synth.py weights)
# Clocking (energies per flop and per clock gate: romsim.tech, ASAP7). Registers of blocks
# without a synthesized netlist, counted from their structure (C):
FLOPS_PER_FP16_LANE = 2 * 16 + 32  # two fp16 operand registers and an fp32 accumulator
FLOPS_PER_SFU_LANE = 3 * 16  # operand, intermediate and result registers of a polynomial lane
FLOPS_PER_ROUTER_PORT_BIT = 1  # one input-buffer (flit) register per link bit and port
ICG_FLOPS = 32  # (C) flops behind one integrated clock gate: a 32-bit register bank
# Datapath switching: romsim.area.model.datapath_activity(bits), measured (S) per width by the
#   gate-level simulation of the synthesized cell (romsim/area/synth_activity.json, `python -m
#   romsim.rtl.activity --unit-delay --real-data --write`): on the real SmolLM2 tile and layer
#   inputs, 0.22-0.25 transitions per NAND2-eq per busy cycle with zero-delay gates (no glitches),
#   0.73-1.02 with a unit delay per gate (glitches counted, an over-count); the model takes the
#   unit-delay value (the conservative end). Random data switch more (0.29-0.30 / 1.01-1.29).
#   Against a 32-bit adder measured alike (the per-gate energy is the add's over GATES_ADDER32)
#   the unit-delay values are 1.10x these: at the glitch-inclusive end the two footings agree.

# --- leakage at 7 nm (scaled to other nodes by romsim.tech.Node.leakage_scale) ----------------
# (D) from the ASAP7 7 nm library's leakage at TT, 0.7 V, 25 C (romsim/tech/nodes.toml [anchor7]:
# one off fin of the SRAM-Vt flavour, a NAND2xp33 of the RVT flavour), by these rules; the same
# corner as the library's clock energies. At a hotter junction (``[operating] junction_temp_c``)
# N and P devices leak by NeuroSim's off-current curves (romsim.tech.leakage_temperature_factors).
_A7 = anchor7()
_PW = 1e-12
# share of the NAND2's leakage with its P fins off (one state of four; the others: N stack off)
NAND2_P_OFF_SHARE = _A7["nand2_leak_p_off_pw"] / (4 * _A7["nand2_leak_pw"])


def sram_cell_leak_w(junction_temp_c=25.0, nm: int = 7):  # noqa: ANN001, ANN201 (or arrays)
    """A 6T HD (one fin per device) cell holding a bit, bit lines precharged: its off pull-up
    (P), off pull-down (N) and the pass gate on its 0 side (N) leak; at 7 nm (other nodes:
    ``Node.leakage_scale``), the junction temperature by the node's off-current curve."""
    fn, fp = leakage_temperature_factors(junction_temp_c, nm)
    return (_A7["pfin_off_leak_pw"] * fp + 2 * _A7["nfin_off_leak_pw"] * fn) * _PW


def logic_leak_w_per_mm2(junction_temp_c=25.0, nm: int = 7):  # noqa: ANN001, ANN201
    """Placed standard-cell logic: one NAND2xp33 per NAND2-eq at the placement utilisation."""
    fn, fp = leakage_temperature_factors(junction_temp_c, nm)
    f = NAND2_P_OFF_SHARE * fp + (1 - NAND2_P_OFF_SHARE) * fn
    return _A7["nand2_leak_pw"] * f * _PW * LOGIC_UTILISATION / (NAND2_UM2 * 1e-6)


def rom_leak_w_per_mm2(junction_temp_c=25.0, nm: int = 7):  # noqa: ANN001, ANN201
    """ROM arrays: at most one off N fin (bit line precharged) per raw 7 nm ROM cell area (an
    upper bound: B-ROM and NOR ROMs hold fewer devices than bit positions)."""
    fn, _ = leakage_temperature_factors(junction_temp_c, nm)
    rom_um2 = node(COMPILER_NODE_NM).rom_bitcell_um2
    return _A7["nfin_off_leak_pw"] * fn * _PW / (rom_um2 * 1e-6)


def sram_macro_leak_w(bits, area_mm2, junction_temp_c, n: Node):  # noqa: ANN001, ANN201
    """An SRAM macro of ``bits`` on ``area_mm2`` at node ``n``: its bit cells
    (:func:`sram_cell_leak_w`) and its periphery (the area beyond the cells) as placed logic
    (:func:`logic_leak_w_per_mm2`), by ``Node.leakage_scale``; scalars or numpy arrays."""
    periph_mm2 = np.maximum(area_mm2 - bits * n.sram_bitcell_um2 / UM2_PER_MM2, 0.0)
    cells_w = bits * sram_cell_leak_w(junction_temp_c, n.nm)
    return (cells_w + periph_mm2 * logic_leak_w_per_mm2(junction_temp_c, n.nm)) * n.leakage_scale


# at 25 C (docs/constants.md)
SRAM_CELL_LEAK_W = sram_cell_leak_w()
SRAM_LEAK_W_PER_MBIT_7NM = SRAM_CELL_LEAK_W * 1e6  # per 10^6 bit cells (periphery as logic)
LOGIC_LEAK_W_PER_MM2_7NM = logic_leak_w_per_mm2()
ROM_LEAK_W_PER_MM2_7NM = rom_leak_w_per_mm2()
POWER_GATE_RESIDUAL = 0.05  # (C) leakage left in a gated block behind high-Vt header switches
#                             (the MTCMOS technique of Mutoh et al., JSSC 1995); ~20x cut
POWER_GATE_AREA_OVERHEAD = 0.03  # (C) sleep transistors and isolation cells, ~3 % of a block
POWER_GATE_WAKE_CYCLES = 10  # (C) cycles to restore a gated block's supply


def array_efficiency(bits_per_macro: float, eff_1k: float, eff_8k: float) -> float:
    """Array efficiency at the compiler's node for a macro of ``bits_per_macro`` bits: the
    compiler's 1K x 64 and 8K x 64 points joined linearly in log2(capacity), so a wide array is
    as efficient as a deep one of the same capacity (periphery is amortised over the bits);
    extrapolated beyond 8K x 64 up to 90 %, and at least 5 %."""
    rows64 = bits_per_macro / COMPILER_WORD_BITS
    slope = (eff_8k - eff_1k) / 3.0  # per doubling
    eff = eff_1k + slope * math.log2(max(rows64, 128) / 1024)
    return min(max(eff, 0.05), 0.90)


def macro_efficiency(
    bits_per_macro: float,
    eff_1k: float,
    eff_8k: float,
    cell_um2: float,
    cell_7nm_um2: float,
    logic_scale: float,
) -> float:
    """Efficiency at another node: the compiler's periphery (logic) scales with the NAND2 area
    (``logic_scale`` = NAND2(node) / NAND2(7 nm)), the bit cells with the node's cell."""
    e7 = array_efficiency(bits_per_macro, eff_1k, eff_8k)
    periph_7 = bits_per_macro * cell_7nm_um2 * (1 / e7 - 1)
    cells = bits_per_macro * cell_um2
    return cells / (cells + periph_7 * logic_scale)
