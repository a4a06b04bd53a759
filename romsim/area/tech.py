"""Technology constants at TSMC 7 nm and scaling to other nodes. Sources are next to each value
and collected in docs/constants.md. Symbols: (P) ROMA paper via ../shared/DESIGN.md, (L) literature,
(C) chosen, (F) fitted (each fit is listed in docs/validation.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# --- memory arrays at 7 nm -------------------------------------------------------------------
ROM_BITCELL_UM2 = 0.009  # (P) raw ROM cell at 7 nm ("deepest macro ~57.8 Mbit/mm2")
SRAM_BITCELL_UM2 = 0.027  # (P, L) TSMC N7 high-density 6T cell (IEDM 2016: 0.027 um2)
BROM_AREA_FACTOR = 0.60  # (P) B-ROM: ~40 % less area than a standard ROM
BROM_TRANSISTOR_FACTOR = 0.25  # (P) about 1/4 of the transistors of a standard ROM
# Array efficiency (bit-cell area / macro area) of the paper's 7 nm compiler, N x 64 macros:
ROM_EFF_1K, ROM_EFF_8K = 0.194, 0.520  # (P)
SRAM_EFF_1K, SRAM_EFF_8K = 0.354, 0.694  # (P)

# --- logic at 7 nm -----------------------------------------------------------------------------
NAND2_UM2 = 0.059  # (L) TSMC N7 NAND2 footprint, 57 nm CPP x 240 nm cell height x ~4.3 tracks
LOGIC_UTILISATION = 0.70  # (L) placement density of standard-cell blocks
# NAND2-equivalent gate counts (L: textbook array-multiplier / adder estimates; issue 4 replaces
# them with Yosys synthesis of the generated cells):
GATES_INT_MAC_4x8 = 260  # 4x8 multiplier (~32 FA) + 32-bit accumulate share
GATES_DEQUANT = 2500  # fp16 scale multiply + zero correction per cell
GATES_ADDER32 = 224  # 32-bit adder (ripple/carry-select mix)
GATES_FP16_MAC = 1100  # fp16/fp8 multiply-add in the H-Unit and vector lanes
GATES_SFU = 9000  # exp / rsqrt / sigmoid lane (piecewise polynomial)
GATES_ROUTER_PER_PORT_BIT = 12  # buffer flops + crossbar mux per port per link bit

# --- energy at 7 nm ----------------------------------------------------------------------------
ROM_READ_PJ_PER_BIT = 0.117  # (F) fitted to 33.1 W at 31.8K tok/s (P); ROM reads dominate
BROM_READ_FACTOR = 0.60  # (P) fewer transistors switching per access (same factor as area)
INT_MAC_PJ = 0.040  # (L) 4x8 multiply + 32b add, Horowitz ISSCC'14 45 nm values scaled to 7 nm
FP_MAC_PJ = 0.25  # (L) fp16 FMA at 7 nm (Horowitz 45 nm 1.5 pJ, scaled)
VEC_OP_PJ = 0.15  # (L)
SRAM_PJ_PER_BYTE = 0.9  # (L) large-array SRAM access at 7 nm (~0.11 pJ/bit)
LINK_PJ_PER_BYTE_HOP = 0.6  # (L) ~0.075 pJ/bit per ~1.3 mm hop of 7 nm global wire
SRAM_LEAK_W_PER_MBIT = 1.0e-3  # (L) HD SRAM leakage at nominal voltage, 7 nm
LOGIC_LEAK_W_PER_MM2 = 0.010  # (L)
ROM_LEAK_W_PER_MM2 = 0.001  # (C) ROM arrays: few transistors, no cross-coupled cells


def array_efficiency(rows: int, eff_1k: float, eff_8k: float) -> float:
    """Array efficiency for an N x 64 macro of ``rows`` rows: the compiler's two points joined
    linearly in log2(depth), extrapolated beyond 8K up to 90 %."""
    slope = (eff_8k - eff_1k) / 3.0  # per doubling of depth
    eff = eff_1k + slope * math.log2(max(rows, 128) / 1024)
    return min(max(eff, 0.05), 0.90)


@dataclass(frozen=True)
class NodeScale:
    area: float  # area relative to 7 nm
    energy: float  # dynamic energy per operation relative to 7 nm
    leakage: float  # leakage per mm2 relative to 7 nm


# Relative to N7. Sources (L): TSMC public density/power claims (N5: 1.8x logic density, -30 %
# power; N6: 1.18x density, ~-8 % power; N16->N7: 3.3x density, -60 % power; N12 ~ N16 shrink
# 0.9x area) and Stillmaker & Baas, Integration 58 (2017) for 28 nm vs 16 nm.
NODE_SCALE: dict[int, NodeScale] = {
    5: NodeScale(area=0.56, energy=0.70, leakage=1.10),
    6: NodeScale(area=0.85, energy=0.92, leakage=1.00),
    7: NodeScale(area=1.00, energy=1.00, leakage=1.00),
    12: NodeScale(area=2.95, energy=2.20, leakage=0.70),
    16: NodeScale(area=3.30, energy=2.50, leakage=0.65),
    28: NodeScale(area=8.50, energy=4.50, leakage=0.40),
}
