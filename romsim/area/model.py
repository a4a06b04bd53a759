"""Hardware components, Accelergy-style: every block of the chip is one :class:`Component` with
the same faces — ``area_mm2``, ``leakage_w`` and named per-action energies — built from the
technology node's data (:mod:`romsim.tech`) and the design constants (:mod:`romsim.area.tech`).

Components and the actions they price (the performance model counts actions under these keys,
:mod:`romsim.perf.actions`):

- ``fused_cells``   ROM array of each cell by ``rom.style`` (B-ROM, standard ROM macro, logic
                    ROM) and the cell's compute (Yosys-synthesized gate count): ``rom_bits``
                    (one bit read), ``l_macs`` (one low-bit MAC of the cell datapath);
- ``unit_periphery`` adder tree across a unit's cells and its activation buffer;
- ``lora_kv_sram``  the LoRA + KV-cache SRAM macros: ``sram_read_bytes``, ``sram_write_bytes``;
- ``h_compute``     H-Unit (LoRA, attention): ``h_macs``, ``h_ops``;
- ``vector_units``  norms, RoPE, SiLU, sampling (with the activation SRAM): ``vec_ops``;
- ``routers``       mesh routers and links: ``link_bytes`` (one byte over one hop);
- ``control_io``    control, clocking and IO (a share of the die): ``clock_cycles`` (one die
                    cycle of the clock: every flop of every block without clock gating, only
                    the clock gates with it; gated flops are priced in their block's actions);
- ``off_chip``      the off-chip link (no die area here): ``offchip_bytes``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from romsim.area import tech as T
from romsim.config import ChipConfig
from romsim.tech import Node, node
from romsim.units import UM2_PER_MM2

_PJ = 1e-12
_FJ = 1e-15


@dataclass(frozen=True)
class Component:
    name: str
    unit: str  # paper's area bucket: L-Unit, H-Unit, Vector, Other
    count: int
    area_mm2_each: float
    leakage_w_each: float
    actions: dict[str, float] = field(default_factory=dict)  # action -> joules per action
    gated_by: str | None = None  # perf resource whose busy fraction this block's leakage follows
    flops_each: float = 0.0  # registers (clocked every cycle unless clock-gated)

    @property
    def area_mm2(self) -> float:
        return self.count * self.area_mm2_each

    @property
    def leakage_w(self) -> float:
        return self.count * self.leakage_w_each

    @property
    def flops(self) -> float:
        return self.count * self.flops_each


def _logic_mm2(gates: float, n: Node) -> float:
    return gates * n.nand2_um2 / T.LOGIC_UTILISATION / UM2_PER_MM2


def _logic_scale(n: Node) -> float:
    return n.nand2_um2 / node(T.COMPILER_NODE_NM).nand2_um2


def _sram_mm2(bits: float, macro_bits: float, n: Node) -> float:
    """SRAM of ``bits`` in macros of ``macro_bits`` (array efficiency by capacity)."""
    if bits <= 0:
        return 0.0
    c7 = node(T.COMPILER_NODE_NM).sram_bitcell_um2
    eff = T.macro_efficiency(
        macro_bits, T.SRAM_EFF_1K, T.SRAM_EFF_8K, n.sram_bitcell_um2, c7, _logic_scale(n)
    )
    return bits * n.sram_bitcell_um2 / eff / UM2_PER_MM2


@lru_cache(maxsize=1)
def _synth_calibration() -> dict | None:
    """Yosys synthesis of the generated cells (rtl/, `romsim rtl synth --all --write-calibration`)."""
    try:
        text = resources.files("romsim.area").joinpath("synth_calibration.json").read_text()
    except FileNotFoundError:
        return None
    return json.loads(text)


@lru_cache(maxsize=1)
def _activity_by_bits() -> dict[int, float]:
    """Measured switching of the synthesized cell per bit width (romsim/area/synth_activity.json,
    `python -m romsim.rtl.activity --unit-delay --real-data --write`): the real SmolLM2 tile and
    layer inputs, a unit delay per gate (glitches counted: the conservative end of the measured
    range, whose zero-delay end has no glitches)."""
    text = resources.files("romsim.area").joinpath("synth_activity.json").read_text()
    res = json.loads(text)["results"]
    return {
        int(b): float(r["real_data"]["unit_delay"]["activity_all_nand2"]) for b, r in res.items()
    }


def datapath_activity(bits: int) -> float:
    """Output transitions per NAND2-eq of the cell's datapath (flops included) per busy cycle at
    weight width ``bits`` (:func:`_activity_by_bits`); a width not simulated takes the nearest
    simulated one (ties: the wider)."""
    table = _activity_by_bits()
    near = min(table, key=lambda b: (abs(b - bits), -b))
    return table[near]


def _calibration_entry(chip: ChipConfig, style: str) -> tuple[dict | None, float]:
    cal = _synth_calibration()
    if cal is None:
        return None, 1.0
    key = "fused" if style == "brom" else "conventional"
    entry = cal["styles"].get(key, {}).get(str(chip.quant.default.bits))
    scale = chip.cell.mac_weight_bits_per_cycle / cal["config"]["mac_weight_bits_per_cycle"]
    return entry, scale


def cell_compute_gates(chip: ChipConfig, style: str | None = None) -> float:
    """NAND2-equivalents of one cell's datapath (weight decode, MACs, accumulation, zero
    correction). From the Yosys calibration of the generated RTL when it has this bit width,
    scaled by MAC width; else from the literature gate counts in tech.py."""
    regs = (chip.cell.weight_reuse_tokens - 1) * chip.rom.word_bits * T.GATES_PER_FLOP
    entry, scale = _calibration_entry(chip, style or chip.rom.style)
    fmt = chip.quant.default
    bits = max(fmt.bits, fmt.mix.bits) if fmt.mix is not None else fmt.bits
    macs = max(1, chip.cell.mac_weight_bits_per_cycle // bits)
    # NF4: every MAC lane decodes its code through the 16-entry codebook
    codebook = macs * T.GATES_CODEBOOK16_DECODE if fmt.kind == "nf4" else 0
    if entry is not None:
        return float(entry["nand2_eq"]) * scale + regs + codebook
    return macs * T.GATES_INT_MAC_4x8 * (chip.cell.act_bits / 8) + T.GATES_DEQUANT + regs + codebook


def cell_compute_flops(chip: ChipConfig, style: str | None = None) -> float:
    """Flip-flops of one cell's datapath (synthesis), for its clock energy."""
    regs = (chip.cell.weight_reuse_tokens - 1) * chip.rom.word_bits
    entry, scale = _calibration_entry(chip, style or chip.rom.style)
    if entry is not None and "flops" in entry:
        return float(entry["flops"]) * scale + regs
    return cell_compute_gates(chip, style) / 30 + regs  # (C) ~3 % of datapath gates are flops


def logic_rom_gates_per_one_bit() -> float:
    """NAND2-eq per stored 1-bit of a ROM synthesized as logic (calibration, or 1.0)."""
    cal = _synth_calibration() or {}
    return float(cal.get("logic_rom", {}).get("nand2_eq_per_one_bit", 1.0))


def rom_array_mm2(bits: float, bank_rows: int, style: str, n: Node, word_bits: int = 64,
                  zero_fraction: float = 0.5) -> float:  # fmt: skip
    """The ROM of one cell: B-ROM or standard macro (bit cells + periphery by capacity), or a
    logic ROM (gates for the 1-bits only)."""
    if style == "logic":
        ones = bits * (1 - zero_fraction)
        return _logic_mm2(ones * logic_rom_gates_per_one_bit(), n)
    c7 = node(T.COMPILER_NODE_NM).rom_bitcell_um2
    eff = T.macro_efficiency(
        bank_rows * word_bits, T.ROM_EFF_1K, T.ROM_EFF_8K, n.rom_bitcell_um2, c7, _logic_scale(n)
    )
    factor = T.BROM_AREA_FACTOR if style == "brom" else 1.0
    return bits * n.rom_bitcell_um2 * factor / eff / UM2_PER_MM2


def _zero_fraction(chip: ChipConfig) -> float:
    if chip.rom.logic_zero_bit_fraction is not None:
        return chip.rom.logic_zero_bit_fraction
    from romsim.rom.bitstats import zero_bit_fraction

    return zero_bit_fraction(chip.quant.default)


def cell_area_mm2(chip: ChipConfig, style: str | None = None) -> dict[str, float]:
    """One cell: ROM array, compute, and the cell as laid out. A B-ROM fused cell puts the
    compute under the metal-heavy ROM array (the paper's fused layout), so it costs the larger
    of the two; a standard ROM macro or a logic ROM sits beside its MAC block."""
    style = style or chip.rom.style
    n = node(chip.tech.process_nm)
    zf = _zero_fraction(chip) if style == "logic" else 0.5
    rom = rom_array_mm2(
        chip.rom.bits_per_cell, chip.rom.bank_rows, style, n, chip.rom.word_bits, zf
    )
    comp = _logic_mm2(cell_compute_gates(chip, style), n)
    cell = max(rom, comp) if style == "brom" else rom + comp
    return {"rom_array_mm2": rom, "compute_mm2": comp, "cell_mm2": cell}


def rom_read_j_per_bit(chip: ChipConfig, style: str | None = None) -> float:
    """One stored bit read: macro styles by their bank's capacity (rule in romsim.tech); a logic
    ROM's word read switches a decode tree of depth log2(rows) per output bit."""
    style = style or chip.rom.style
    n = node(chip.tech.process_nm)
    if style == "logic":
        return math.log2(max(chip.rom.macro_rows, 2)) * n.gate_op_fj() * _FJ
    bank_bytes = chip.rom.bank_rows * chip.rom.word_bits / 8
    factor = T.BROM_READ_FACTOR if style == "brom" else 1.0
    return n.rom_read_pj_per_bit(bank_bytes) * factor * _PJ


def cell_cycle_j(chip: ChipConfig, style: str | None = None) -> float:
    """One busy cycle of a cell's datapath: its synthesized gates switch at the measured
    activity (:func:`datapath_activity`), each transition at the per-gate energy of the node's
    32-bit add (romsim.tech); with clock gating also the flops' clock (without it the flops are
    clocked every cycle, priced by ``clock_cycles``)."""
    n = node(chip.tech.process_nm)
    act = datapath_activity(chip.quant.default.bits)
    e = cell_compute_gates(chip, style) * act * n.gate_op_fj() * _FJ
    if chip.operating.clock_gating:
        e += cell_compute_flops(chip, style) * n.flop_clock_fj * _FJ
    return e


def unit_periphery_flops(chip: ChipConfig) -> float:
    """The pipelined adder tree of a matrix unit: one registered sum per adder (D)."""
    return (chip.cell.cells_per_unit - 1) * chip.cell.acc_bits


def h_unit_flops(chip: ChipConfig) -> float:
    return (
        chip.h_unit.macs_per_unit_per_cycle * T.FLOPS_PER_FP16_LANE
        + chip.h_unit.sfu_lanes_per_unit * T.FLOPS_PER_SFU_LANE
    )


def vector_unit_flops(chip: ChipConfig) -> float:
    return (
        chip.vector.lanes_per_unit * T.FLOPS_PER_FP16_LANE
        + chip.vector.sfu_lanes_per_unit * T.FLOPS_PER_SFU_LANE
    )


def router_flops(chip: ChipConfig) -> float:
    return 5 * chip.interconnect.link_bytes_per_cycle * 8 * T.FLOPS_PER_ROUTER_PORT_BIT


def blocks(chip: ChipConfig) -> list[Component]:
    """Every block: area, leakage and the energy of its actions."""
    n = node(chip.tech.process_nm)
    leak = n.leakage_scale
    U, VU = chip.mesh.matrix_units, chip.mesh.vector_units
    style = chip.rom.style
    cell = cell_area_mm2(chip)
    # the ROM array's devices and the compute's both leak (in the fused layout they share one
    # footprint: the B-ROM's metal over the compute's transistors)
    tj = chip.operating.junction_temp_c
    logic_w_mm2 = T.logic_leak_w_per_mm2(tj, n.nm)
    rom_leak_w_mm2 = T.rom_leak_w_per_mm2(tj, n.nm) if style != "logic" else logic_w_mm2
    cell_leak = cell["rom_array_mm2"] * rom_leak_w_mm2 + cell["compute_mm2"] * logic_w_mm2
    gate_fj = n.gate_op_fj()
    w_bits = chip.quant.default.code_bits_per_weight
    macs_per_cycle = max(1.0, chip.cell.mac_weight_bits_per_cycle / w_bits)
    # clock of gated registers, priced in the action that makes them work (0 without gating);
    # the adder tree's registers are charged with the cells' working cycles (it is busy only
    # while reducing, a few % of them: a small over-count, chosen for one action per cycle)
    clk_j = n.flop_clock_fj * _FJ if chip.operating.clock_gating else 0.0
    periph_flops = unit_periphery_flops(chip)
    l_mac_j = (
        cell_cycle_j(chip) + periph_flops / chip.cell.cells_per_unit * clk_j
    ) / macs_per_cycle
    lane_clk_j = T.FLOPS_PER_FP16_LANE * clk_j

    buf_bits = chip.area.unit_buffer_bytes * 8
    unit_periph = _logic_mm2((chip.cell.cells_per_unit - 1) * T.GATES_ADDER32, n) + _sram_mm2(
        buf_bits, buf_bits, n
    )
    h_macro_bits = chip.area.h_sram_macro_rows * chip.rom.word_bits
    h_sram = _sram_mm2(chip.sram.lora_kv_bytes * 8, h_macro_bits, n)
    h_logic = _logic_mm2(
        chip.h_unit.macs_per_unit_per_cycle * T.GATES_FP16_MAC
        + chip.h_unit.sfu_lanes_per_unit * T.GATES_SFU,
        n,
    )
    act_macro_bits = chip.area.act_sram_macro_rows * chip.rom.word_bits
    v_sram = _sram_mm2(chip.sram.act_bytes * 8, act_macro_bits, n) / max(VU, 1)
    v_logic = _logic_mm2(
        chip.vector.lanes_per_unit * T.GATES_FP16_MAC
        + chip.vector.sfu_lanes_per_unit * T.GATES_SFU,
        n,
    )
    link_bits = chip.interconnect.link_bytes_per_cycle * 8
    router = _logic_mm2(5 * link_bits * T.GATES_ROUTER_PER_PORT_BIT, n)
    logic_leak = logic_w_mm2 * leak

    def sram_leak(bits: float, area_mm2: float) -> float:
        return float(T.sram_macro_leak_w(bits, area_mm2, tj, n))

    h_macro_bytes = h_macro_bits / 8
    out = [
        Component(
            "fused_cells", "L-Unit", chip.n_cells, cell["cell_mm2"], cell_leak * leak,
            {"rom_bits": rom_read_j_per_bit(chip), "l_macs": l_mac_j},
            gated_by="rom", flops_each=cell_compute_flops(chip),
        ),
        Component(
            "unit_periphery", "L-Unit", U, unit_periph, unit_periph * logic_leak,
            gated_by="rom", flops_each=periph_flops,
        ),
        Component(
            "lora_kv_sram", "H-Unit", 1, h_sram, sram_leak(chip.sram.lora_kv_bytes * 8, h_sram),
            {
                "sram_read_bytes": 8 * n.sram_read_pj_per_bit(h_macro_bytes) * _PJ,
                "sram_write_bytes": 8 * n.sram_write_pj_per_bit(h_macro_bytes) * _PJ,
            },
        ),
        Component(
            "h_compute", "H-Unit", U, h_logic, h_logic * logic_leak,
            {"h_macs": n.fp_mac_pj(16) * _PJ + lane_clk_j,
             "h_ops": n.fp_mac_pj(16) * _PJ + lane_clk_j},
            gated_by="h_mac", flops_each=h_unit_flops(chip),
        ),
        Component(
            "vector_units", "Vector", max(VU, 1), v_sram + v_logic,
            sram_leak(chip.sram.act_bytes * 8 / max(VU, 1), v_sram) + v_logic * logic_leak,
            {"vec_ops": n.fp_mac_pj(16) * _PJ + lane_clk_j},
            flops_each=vector_unit_flops(chip),
        ),
        Component("routers", "Other", U + VU, router, router * logic_leak,
                  flops_each=router_flops(chip)),
    ]  # fmt: skip
    core = sum(b.area_mm2 for b in out)
    f = chip.area.control_io_fraction
    ctrl = core * f / (1 - f)
    out.append(Component("control_io", "Other", 1, ctrl, ctrl * logic_leak))
    if chip.operating.power_gating:
        out = [
            Component(
                b.name, b.unit, b.count, b.area_mm2_each * (1 + T.POWER_GATE_AREA_OVERHEAD),
                b.leakage_w_each, b.actions, b.gated_by, b.flops_each,
            )
            if b.gated_by
            else b
            for b in out
        ]  # fmt: skip
    # link energy needs the hop length, which needs the die: priced after the areas
    side = math.sqrt(sum(b.area_mm2 for b in out))
    hop = side / max(chip.mesh.rows, chip.mesh.cols)
    byte_hop_j = 8 * (
        0.5 * n.wire_pj_per_bit_mm * hop * _PJ  # random data toggles half the wires
        + T.GATES_ROUTER_PER_PORT_BIT * gate_fj * _FJ  # buffer + crossbar per bit
        + T.FLOPS_PER_ROUTER_PORT_BIT * clk_j  # the input register's clock (gated)
    )
    # a unit's activation bus spans the unit (side = the hop length) and reaches all its cells
    bus_byte_j = 8 * 0.5 * n.wire_pj_per_bit_mm * hop * _PJ
    # the die's clock, per cycle: every flop when ungated; only the clock gates when gated
    flops = sum(b.flops for b in out)
    if chip.operating.clock_gating:
        cycle_clock_j = flops / T.ICG_FLOPS * n.icg_clock_fj * _FJ
    else:
        cycle_clock_j = flops * n.flop_clock_fj * _FJ
    extra = {
        "routers": {"link_bytes": byte_hop_j},
        "unit_periphery": {"unit_bus_bytes": bus_byte_j},
        "control_io": {"clock_cycles": cycle_clock_j},
    }
    out = [
        Component(b.name, b.unit, b.count, b.area_mm2_each, b.leakage_w_each,
                  {**b.actions, **extra[b.name]}, b.gated_by, b.flops_each)
        if b.name in extra else b
        for b in out
    ]  # fmt: skip
    out.append(
        Component(
            "off_chip", "off-chip", 1, 0.0, 0.0,
            {"offchip_bytes": 8 * chip.offchip.energy_pj_per_bit * _PJ},
        )
    )  # fmt: skip
    return out


def area_breakdown_mm2(chip: ChipConfig) -> dict[str, float]:
    return {b.name: b.area_mm2 for b in blocks(chip) if b.unit != "off-chip"}


def shares_of(bl: list[Component]) -> dict[str, float]:
    """Die-area share of each of the paper's buckets (L-Unit, H-Unit, Vector, Other)."""
    on_die = [b for b in bl if b.unit != "off-chip"]
    total = sum(b.area_mm2 for b in on_die)
    out: dict[str, float] = {}
    for b in on_die:
        out[b.unit] = out.get(b.unit, 0.0) + b.area_mm2 / total
    return out


def leakage_w(chip: ChipConfig, busy: dict[str, float] | None = None) -> float:
    """Leakage of the whole chip. With ``operating.power_gating`` and the resources' busy
    fractions (``PerfModel.utilisation``), a gated block leaks fully only while busy and
    ``POWER_GATE_RESIDUAL`` of it otherwise."""
    total = 0.0
    for b in blocks(chip):
        if chip.operating.power_gating and b.gated_by and busy is not None:
            u = min(1.0, max(0.0, busy.get(b.gated_by, 1.0)))
            total += b.leakage_w * (u + (1 - u) * T.POWER_GATE_RESIDUAL)
        else:
            total += b.leakage_w
    return total


def ablation_um2(chip: ChipConfig) -> dict[str, float]:
    """One L-Unit cell built four ways (the paper's ablation): SRAM + compute, standard ROM +
    compute, B-ROM + compute (side by side), and the fused B-ROM cell."""
    n = node(chip.tech.process_nm)
    bits = chip.rom.bits_per_cell
    conv = _logic_mm2(cell_compute_gates(chip, "rom"), n)
    fused = _logic_mm2(cell_compute_gates(chip, "brom"), n)
    wb = chip.rom.word_bits
    rom = rom_array_mm2(bits, chip.rom.bank_rows, "rom", n, wb)
    brom = rom_array_mm2(bits, chip.rom.bank_rows, "brom", n, wb)
    sram = _sram_mm2(bits, chip.rom.bank_rows * wb, n)
    return {
        "sram_compute": (sram + conv) * UM2_PER_MM2,
        "rom_compute": (rom + conv) * UM2_PER_MM2,
        "brom_compute": (brom + fused) * UM2_PER_MM2,
        "fused_cell": max(brom, fused) * UM2_PER_MM2,
    }


def ablation_power_mw(chip: ChipConfig) -> dict[str, float]:
    """One L-Unit cell of :func:`ablation_um2`, reading one word and running its datapath every
    cycle at the chip's clock (mW, dynamic only): SRAM + compute and standard ROM + compute with
    the conventional datapath, B-ROM + compute and the fused cell with the fused one. The model
    has no energy for the wires between a separate array and its compute, so B-ROM + compute and
    the fused cell cost the same."""
    n = node(chip.tech.process_nm)
    f = chip.clock_hz
    bank_bytes = chip.rom.bank_rows * chip.rom.word_bits / 8
    wb = chip.rom.word_bits
    conv = cell_cycle_j(chip, "rom")
    fused = cell_cycle_j(chip, "brom")
    sram_j = wb * n.sram_read_pj_per_bit(bank_bytes) * _PJ
    rom_j = wb * rom_read_j_per_bit(chip, "rom")
    brom_j = wb * rom_read_j_per_bit(chip, "brom")
    return {
        "sram_compute": (sram_j + conv) * f * 1e3,
        "rom_compute": (rom_j + conv) * f * 1e3,
        "brom_compute": (brom_j + fused) * f * 1e3,
        "fused_cell": (brom_j + fused) * f * 1e3,
    }
