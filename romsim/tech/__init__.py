"""Technology nodes as data (``nodes.toml``) and the scaling rules that derive energies from them.

Published per node (each value with its source in ``nodes.toml``): the high-density SRAM bit
cell, the NAND2 footprint (or logic density), the supply voltage, leakage current and gate delay.
Everything else is derived by three stated rules, so SRAM, ROM and logic scale separately:

1. **Switching energy** (Dennard et al., JSSC 1974: capacitance scales with the layout's linear
   dimension, energy = C V^2). An operation's energy at a node is its 45 nm value (Horowitz,
   ISSCC 2014, 0.9 V) times ``sqrt(A_node / A_45) * (V_node / 0.9)^2``, with ``A`` the area of the
   structure that sets its wires: the SRAM bit cell for memory-array accesses, the NAND2 for
   logic. (Stillmaker & Baas' device fits give ~15x from 45 to 7 nm, more than the 4-8x seen in
   accelerator MAC energies; the geometric rule gives ~6x at 7 nm.)
2. **Wire energy** per bit and mm is constant in capacitance per mm (a wire's capacitance per
   length barely changes with the node): the 40 nm value of Keckler et al. (IEEE Micro 2011)
   times ``(V_node / V_40)^2``.
3. **ROM bit cell** is one third of the node's SRAM bit cell: the ratio of ROMA's 7 nm memory
   compiler ("a standard ROM bit cell is about 1/3 of an SRAM bit cell"; 0.009 vs 0.027 um^2).

Operand widths: a multiplier's energy scales with the product of its operand widths, an adder's
with its width (array multiplier / ripple-carry structure), from Horowitz's 8- and 32-bit points.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from romsim.errors import RomsimInputError

ROM_TO_SRAM_CELL = 1 / 3  # (P) ROMA: standard ROM bit cell ~1/3 of the SRAM cell, 7 nm compiler


@cache
def _table() -> dict:
    text = resources.files("romsim.tech").joinpath("nodes.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def nodes_nm() -> tuple[int, ...]:
    """Every node the table covers, largest first."""
    return tuple(sorted((int(k) for k in _table()["node"]), reverse=True))


@dataclass(frozen=True)
class Node:
    """One technology node: published values and the energies the rules derive from them."""

    nm: int
    sram_bitcell_um2: float
    nand2_um2: float
    vdd_v: float
    gate_delay_ps: float  # FO4-class delay; nearest published node where this one has none
    ioff_na_per_um: float
    sources: dict[str, str]

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def rom_bitcell_um2(self) -> float:
        return self.sram_bitcell_um2 * ROM_TO_SRAM_CELL

    # ---- energy rules -----------------------------------------------------------------------
    def _v2(self) -> float:
        return (self.vdd_v / _table()["anchor"]["vdd_v"]) ** 2

    @property
    def logic_energy_scale(self) -> float:
        """Switching energy of logic relative to Horowitz's 45 nm (rule 1, NAND2 geometry)."""
        return math.sqrt(self.nand2_um2 / _table()["anchor"]["nand2_um2"]) * self._v2()

    @property
    def memory_energy_scale(self) -> float:
        """Switching energy of SRAM/ROM arrays relative to 45 nm (rule 1, bit-cell geometry)."""
        return (
            math.sqrt(self.sram_bitcell_um2 / _table()["anchor"]["sram_bitcell_um2"]) * self._v2()
        )

    def int_mult_pj(self, a_bits: int, b_bits: int) -> float:
        """Integer multiply, energy ~ product of widths (Horowitz: 8b 0.2 pJ at 45 nm)."""
        return _table()["anchor"]["int8_mult_pj"] * (a_bits * b_bits / 64) * self.logic_energy_scale

    def int_add_pj(self, bits: int) -> float:
        """Integer add, energy ~ width (Horowitz: 32b 0.1 pJ at 45 nm)."""
        return _table()["anchor"]["int32_add_pj"] * (bits / 32) * self.logic_energy_scale

    def int_mac_pj(self, a_bits: int, b_bits: int, acc_bits: int) -> float:
        return self.int_mult_pj(a_bits, b_bits) + self.int_add_pj(acc_bits)

    def fp_mac_pj(self, bits: int) -> float:
        """Float multiply-add (Horowitz fp16 1.1 + 0.4 pJ, fp32 3.7 + 0.9 pJ; fp8 from fp16 by
        the multiplier's width rule)."""
        t = _table()["anchor"]
        if bits >= 32:
            e = t["fp32_mult_pj"] + t["fp32_add_pj"]
        elif bits >= 16:
            e = t["fp16_mult_pj"] + t["fp16_add_pj"]
        else:  # fp8: mantissa product 4x smaller than fp16's (4b vs 11b ~ (4/11)^2), add halves
            e = t["fp16_mult_pj"] * (4 / 11) ** 2 + t["fp16_add_pj"] / 2
        return e * self.logic_energy_scale

    def gate_op_fj(self) -> float:
        """One NAND2-equivalent switching event: Horowitz's 32-bit add (0.1 pJ) over the 224
        NAND2-eq of a 32-bit adder (romsim.area.tech.GATES_ADDER32), scaled by rule 1."""
        from romsim.area.tech import GATES_ADDER32

        return self.int_add_pj(32) * 1e3 / GATES_ADDER32

    def sram_read_pj_per_bit(self, array_bytes: float) -> float:
        """A read of a macro of ``array_bytes``: Horowitz's 8 KB, 32 KB and 1 MB points joined
        log-linearly (extrapolated with the end slopes), per bit of a 64-bit access, rule 1."""
        t = _table()["anchor"]
        pts = [
            (8 << 10, t["sram_8kb_read_pj_per_64b"]),
            (32 << 10, t["sram_32kb_read_pj_per_64b"]),
            (1 << 20, t["sram_1mb_read_pj_per_64b"]),
        ]
        x = math.log2(max(array_bytes, 64.0))
        (x0, y0), (x1, y1) = (pts[0], pts[1]) if x <= math.log2(pts[1][0]) else (pts[1], pts[2])
        lx0, lx1 = math.log2(x0), math.log2(x1)
        ly = math.log2(y0) + (math.log2(y1) - math.log2(y0)) * (x - lx0) / (lx1 - lx0)
        return 2**ly / 64 * self.memory_energy_scale

    def sram_write_pj_per_bit(self, array_bytes: float) -> float:
        """Writes: no per-size source; taken equal to reads (stated assumption)."""
        return self.sram_read_pj_per_bit(array_bytes)

    def rom_read_pj_per_bit(self, array_bytes: float) -> float:
        """A ROM macro read: the SRAM read of the same size with bit lines shorter by the cell
        ratio (rule 1 applied to the ROM cell: sqrt(1/3))."""
        return self.sram_read_pj_per_bit(array_bytes) * math.sqrt(ROM_TO_SRAM_CELL)

    @property
    def wire_pj_per_bit_mm(self) -> float:
        t = _table()["anchor"]
        return t["wire_pj_per_bit_mm"] * (self.vdd_v / t["wire_vdd_v"]) ** 2

    @property
    def leakage_scale(self) -> float:
        """Leakage power per device relative to 7 nm: off-current x supply (NeuroSim's per-node
        I_off, rule: P_leak = I_off V)."""
        ref = node(7)
        return (self.ioff_na_per_um * self.vdd_v) / (ref.ioff_na_per_um * ref.vdd_v)


@cache
def node(nm: int) -> Node:
    """The table's entry for ``nm`` (a one-line error for a node the table lacks)."""
    t = _table()["node"]
    if str(nm) not in t:
        raise RomsimInputError(
            "tech.process_nm", nm, f"must be one of {', '.join(map(str, nodes_nm()))} (nm)"
        )
    v = t[str(nm)]
    delay = v.get("gate_delay_ps")
    if delay is None:  # nearest larger node with a published value (conservative)
        for n in sorted((int(k) for k in t), key=lambda k: abs(k - nm)):
            if "gate_delay_ps" in t[str(n)]:
                delay = t[str(n)]["gate_delay_ps"]
                break
    return Node(
        nm=nm,
        sram_bitcell_um2=v["sram_bitcell_um2"],
        nand2_um2=v["nand2_um2"],
        vdd_v=v["vdd_v"],
        gate_delay_ps=float(delay),
        ioff_na_per_um=v["ioff_lp_na_per_um"],
        sources={k[:-4]: s for k, s in v.items() if k.endswith("_src")},
    )


__all__ = ["Node", "node", "nodes_nm", "ROM_TO_SRAM_CELL"]
