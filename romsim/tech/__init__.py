"""Technology nodes as data (``nodes.toml``) and the scaling rules that derive energies from them.

Published per node (each value with its source in ``nodes.toml``): the high-density SRAM bit
cell, the NAND2 footprint (or logic density), the supply voltage, leakage current and gate delay.
Everything else is derived by four stated rules, so SRAM, ROM and logic scale separately:

1. **Switching energy, two published anchors.** Operation energies are published at 45 nm
   (Horowitz, ISSCC 2014, 0.9 V) and at 7 nm (Jouppi et al., ISCA 2021, Table 2: the same
   operations on TSMC N7). Between the anchors an energy follows the geometric rule's shape in
   log space: with ``r(node) = sqrt(A_node / A_45) * (V_node / 0.9)^2`` (Dennard et al., JSSC
   1974: capacitance scales with the layout's linear dimension, energy = C V^2; ``A`` is the
   area of the structure that sets the wires, the NAND2 for logic and the SRAM bit cell for
   memory arrays), ``E(node) = E_45 (E_7 / E_45)^(ln r(node) / ln r(7))``, which is exact at
   both anchors. Beyond them (65 nm; 6, 5, 3, 2 nm) the rule's own slope continues from the
   nearer anchor: ``E_45 r(node)`` or ``E_7 r(node) / r(7)``. (The geometric rule alone gives
   8.6x from 45 to 7 nm for logic; the published 7 nm figures are only 2.1-4.3x lower, and the
   SRAM reads 1.3-7.1x.)
2. **Clocking.** A flip-flop's clock and an integrated clock gate's clock per cycle from the
   ASAP7 7 nm predictive library (Clark et al., 2016; TT, 0.7 V), scaled to other nodes by the
   logic rule relative to 7 nm.
3. **Wire energy** per bit and mm is constant in capacitance per mm (a wire's capacitance per
   length barely changes with the node): the 40 nm value of Keckler et al. (IEEE Micro 2011)
   times ``(V_node / V_40)^2``.
4. **ROM bit cell** is one third of the node's SRAM bit cell: the ratio of ROMA's 7 nm memory
   compiler ("a standard ROM bit cell is about 1/3 of an SRAM bit cell"; 0.009 vs 0.027 um^2).

Operand widths: a multiplier's energy scales with the product of its operand widths, an adder's
with its width (array multiplier / ripple-carry structure), from the 8- and 32-bit points.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from romsim.errors import RomsimInputError

ROM_TO_SRAM_CELL = 1 / 3  # (P) ROMA: standard ROM bit cell ~1/3 of the SRAM cell, 7 nm compiler


@cache
def _table() -> dict:
    text = resources.files("romsim.tech").joinpath("nodes.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def nodes_nm() -> tuple[int, ...]:
    """Every node the table covers, largest first."""
    return tuple(sorted((int(k) for k in _table()["node"]), reverse=True))


def _sram_curve(a: dict, x):  # noqa: ANN001, ANN202 (float or numpy array)
    """pJ per 64-bit read at log2(bytes) ``x`` from one anchor's three published points (8 KB,
    32 KB, 1 MB joined log-linearly, extrapolated with the end slopes); ``x`` may be an array."""
    y8, y32, y1m = (math.log2(a[f"sram_{k}_read_pj_per_64b"]) for k in ("8kb", "32kb", "1mb"))
    low = y8 + (y32 - y8) * (x - 13.0) / 2.0
    high = y32 + (y1m - y32) * (x - 15.0) / 5.0
    return 2 ** np.where(x <= 15.0, low, high)


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

    def _scale(self, kind: str) -> float:
        return self.logic_energy_scale if kind == "logic" else self.memory_energy_scale

    def _anchored(self, e45: float, e7: float, kind: str) -> float:
        """Rule 1: an energy published at 45 nm (``e45``) and 7 nm (``e7``), at this node; ``kind``
        names the structure's geometry ("logic": NAND2, "memory": SRAM bit cell)."""
        r, r7 = self._scale(kind), node(7)._scale(kind)
        if self.nm >= 45:
            return e45 * r
        if self.nm <= 7:
            return e7 * r / r7
        return e45 * (e7 / e45) ** (math.log(r) / math.log(r7))

    def _logic(self, key: str) -> float:
        a, b = _table()["anchor"], _table()["anchor7"]
        return self._anchored(a[key], b[key], "logic")

    def int_mult_pj(self, a_bits: int, b_bits: int) -> float:
        """Integer multiply, energy ~ product of widths (8b: 0.2 pJ at 45 nm, 0.07 at 7 nm)."""
        return self._logic("int8_mult_pj") * (a_bits * b_bits / 64)

    def int_add_pj(self, bits: int) -> float:
        """Integer add, energy ~ width (32b: 0.1 pJ at 45 nm, 0.03 at 7 nm)."""
        return self._logic("int32_add_pj") * (bits / 32)

    def int_mac_pj(self, a_bits: int, b_bits: int, acc_bits: int) -> float:
        return self.int_mult_pj(a_bits, b_bits) + self.int_add_pj(acc_bits)

    def fp_mac_pj(self, bits: int) -> float:
        """Float multiply-add (fp16 1.1 + 0.4 pJ at 45 nm, 0.34 + 0.16 at 7 nm; fp32 likewise;
        fp8 from fp16 by the multiplier's width rule)."""
        if bits >= 32:
            return self._logic("fp32_mult_pj") + self._logic("fp32_add_pj")
        if bits >= 16:
            return self._logic("fp16_mult_pj") + self._logic("fp16_add_pj")
        # fp8: mantissa product 4x smaller than fp16's (4b vs 11b ~ (4/11)^2), add halves
        return self._logic("fp16_mult_pj") * (4 / 11) ** 2 + self._logic("fp16_add_pj") / 2

    def gate_op_fj(self) -> float:
        """One NAND2-equivalent switching event: the 32-bit add over the 224 NAND2-eq of a 32-bit
        adder (romsim.area.tech.GATES_ADDER32). At 7 nm 0.134 fJ, against 0.125 fJ for one
        transition of an ASAP7 NAND2xp33 driving one NAND2 input (nodes.toml, a cross-check)."""
        from romsim.area.tech import GATES_ADDER32

        return self.int_add_pj(32) * 1e3 / GATES_ADDER32

    @property
    def flop_clock_fj(self) -> float:
        """One clock cycle of a flip-flop (ASAP7 DFFHQNx1 at 7 nm, rule 2)."""
        a7 = _table()["anchor7"]
        return a7["dff_clock_fj"] * self.logic_energy_scale / node(7).logic_energy_scale

    @property
    def icg_clock_fj(self) -> float:
        """One clock cycle of a closed integrated clock gate (ASAP7 ICGx1 at 7 nm, rule 2)."""
        a7 = _table()["anchor7"]
        return a7["icg_clock_fj"] * self.logic_energy_scale / node(7).logic_energy_scale

    def sram_read_pj_per_bit(self, array_bytes):  # noqa: ANN001, ANN201 (float or array)
        """A read of a macro of ``array_bytes``, per bit of a 64-bit access: each anchor's
        8 KB, 32 KB and 1 MB points joined log-linearly (extrapolated with the end slopes),
        then rule 1 with the bit-cell geometry. ``array_bytes`` may be a numpy array."""
        x = np.log2(np.maximum(array_bytes, 64.0))
        e45 = _sram_curve(_table()["anchor"], x)
        e7 = _sram_curve(_table()["anchor7"], x)
        out = self._anchored(e45, e7, "memory") / 64
        return float(out) if np.ndim(out) == 0 else out

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


PLANAR_MIN_NM = 22  # nodes of 22 nm and up are planar (PTM curves); below, FinFET/GAA


def _ioff_curves(nm: int) -> tuple[list[float], list[float]]:
    """(N, P) off-current at 300..400 K for the node: the nearest planar PTM curve of
    ``[ioff_temp]`` at 22 nm and up, the 7 nm FinFET curve of ``[anchor7]`` below."""
    if nm >= PLANAR_MIN_NM:
        t = _table()["ioff_temp"]
        near = min((65, 45, 32, 22), key=lambda k: (abs(k - nm), k))
        return t[f"n_{near}"], t[f"p_{near}"]
    a = _table()["anchor7"]
    return a["ioff_n_ua_per_um"], a["ioff_p_ua_per_um"]


def leakage_temperature_factors(junction_temp_c, nm: int = 7):  # noqa: ANN001, ANN201
    """(N, P) off-current at ``junction_temp_c`` relative to 300 K, log-interpolated in NeuroSim's
    table for the node (:func:`_ioff_curves`); 25 C (the ASAP7 corner) counts as 300 K.
    ``junction_temp_c`` may be a numpy array."""
    t = np.asarray(_table()["anchor7"]["ioff_temp_k"], dtype=np.float64)
    tk = np.clip(np.asarray(junction_temp_c, dtype=np.float64) + 273.15, t[0], t[-1])
    out = []
    for curve in _ioff_curves(nm):
        i = np.asarray(curve, dtype=np.float64)
        f = np.exp(np.interp(tk, t, np.log(i / i[0])))
        out.append(float(f) if np.ndim(f) == 0 else f)
    return out[0], out[1]


def anchor7() -> dict:
    """The 7 nm anchor's published values (nodes.toml ``[anchor7]``), sources included."""
    return dict(_table()["anchor7"])


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
