"""Area, leakage and per-access energy of every block, Accelergy-style: each block is one
:class:`Block` with the same fields, built from the cited constants in :mod:`romsim.area.tech`
and scaled to the configured node."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from romsim.area import tech as T
from romsim.config import ChipConfig
from romsim.units import UM2_PER_MM2


@dataclass(frozen=True)
class Block:
    name: str
    unit: str  # paper's area bucket: L-Unit, H-Unit, Vector, Other
    count: int
    area_mm2_each: float
    leakage_w_each: float

    @property
    def area_mm2(self) -> float:
        return self.count * self.area_mm2_each

    @property
    def leakage_w(self) -> float:
        return self.count * self.leakage_w_each


def _logic_mm2(gates: float) -> float:
    return gates * T.NAND2_UM2 / T.LOGIC_UTILISATION / UM2_PER_MM2


def _sram_mm2(bits: float, macro_rows: int) -> float:
    eff = T.array_efficiency(macro_rows, T.SRAM_EFF_1K, T.SRAM_EFF_8K)
    return bits * T.SRAM_BITCELL_UM2 / eff / UM2_PER_MM2


def rom_array_mm2(bits: float, bank_rows: int, style: str) -> float:
    eff = T.array_efficiency(bank_rows, T.ROM_EFF_1K, T.ROM_EFF_8K)
    factor = T.BROM_AREA_FACTOR if style == "brom" else 1.0
    return bits * T.ROM_BITCELL_UM2 * factor / eff / UM2_PER_MM2


@lru_cache(maxsize=1)
def _synth_calibration() -> dict | None:
    """Yosys synthesis of the generated cells (rtl/, `romsim rtl synth --all --write-calibration`)."""
    try:
        text = resources.files("romsim.area").joinpath("synth_calibration.json").read_text()
    except FileNotFoundError:
        return None
    return json.loads(text)


def cell_compute_gates(chip: ChipConfig, style: str | None = None) -> float:
    """NAND2-equivalents of one cell's datapath (weight decode, MACs, accumulation, zero
    correction). From the Yosys calibration of the generated RTL when it has this bit width,
    scaled by MAC width; else from the literature gate counts in tech.py."""
    style = style or chip.rom.style
    bits = chip.quant.default.bits
    cal = _synth_calibration()
    if cal is not None:
        key = "fused" if style == "brom" else "conventional"
        entry = cal["styles"].get(key, {}).get(str(bits))
        if entry is not None:
            scale = chip.cell.mac_weight_bits_per_cycle / cal["config"]["mac_weight_bits_per_cycle"]
            return float(entry["nand2_eq"]) * scale
    macs = max(1, chip.cell.mac_weight_bits_per_cycle // bits)
    return macs * T.GATES_INT_MAC_4x8 * (chip.cell.act_bits / 8) + T.GATES_DEQUANT


def cell_area_mm2(chip: ChipConfig, style: str | None = None) -> dict[str, float]:
    """One cell: ROM array, compute, and the cell as laid out. A B-ROM fused cell puts the
    compute under the metal-heavy ROM array (the paper's fused layout), so it costs the larger
    of the two; a conventional ROM sits beside its MAC block."""
    style = style or chip.rom.style
    rom = rom_array_mm2(chip.rom.bits_per_cell, chip.rom.bank_rows, style)
    comp = _logic_mm2(cell_compute_gates(chip, style))
    cell = max(rom, comp) if style == "brom" else rom + comp
    return {"rom_array_mm2": rom, "compute_mm2": comp, "cell_mm2": cell}


def blocks(chip: ChipConfig) -> list[Block]:
    s = T.NODE_SCALE[chip.tech.process_nm]
    U, VU = chip.mesh.matrix_units, chip.mesh.vector_units
    cell = cell_area_mm2(chip)
    rom_share = cell["rom_array_mm2"] / cell["cell_mm2"] if cell["cell_mm2"] else 0.0
    cell_leak = cell["cell_mm2"] * (
        rom_share * T.ROM_LEAK_W_PER_MM2 + (1 - rom_share) * T.LOGIC_LEAK_W_PER_MM2
    )
    unit_periph = _logic_mm2((chip.cell.cells_per_unit - 1) * T.GATES_ADDER32) + _sram_mm2(
        chip.area.unit_buffer_bytes * 8, 1024
    )
    h_sram = _sram_mm2(chip.sram.lora_kv_bytes * 8, chip.area.h_sram_macro_rows)
    h_logic = _logic_mm2(
        chip.h_unit.macs_per_unit_per_cycle * T.GATES_FP16_MAC
        + chip.h_unit.sfu_lanes_per_unit * T.GATES_SFU
    )
    v_sram = _sram_mm2(chip.sram.act_bytes * 8, chip.area.act_sram_macro_rows) / max(VU, 1)
    v_logic = _logic_mm2(
        chip.vector.lanes_per_unit * T.GATES_FP16_MAC + chip.vector.sfu_lanes_per_unit * T.GATES_SFU
    )
    link_bits = chip.interconnect.link_bytes_per_cycle * 8
    router = _logic_mm2(5 * link_bits * T.GATES_ROUTER_PER_PORT_BIT)
    sram_leak = T.SRAM_LEAK_W_PER_MBIT / 1e6 * 8
    out = [
        Block(
            "fused_cells", "L-Unit", chip.n_cells, cell["cell_mm2"] * s.area, cell_leak * s.leakage
        ),
        Block(
            "unit_periphery",
            "L-Unit",
            U,
            unit_periph * s.area,
            unit_periph * T.LOGIC_LEAK_W_PER_MM2 * s.leakage,
        ),
        Block(
            "lora_kv_sram",
            "H-Unit",
            1,
            h_sram * s.area,
            chip.sram.lora_kv_bytes * sram_leak * s.leakage,
        ),
        Block(
            "h_compute", "H-Unit", U, h_logic * s.area, h_logic * T.LOGIC_LEAK_W_PER_MM2 * s.leakage
        ),
        Block(
            "vector_units",
            "Vector",
            max(VU, 1),
            (v_sram + v_logic) * s.area,
            (chip.sram.act_bytes / max(VU, 1) * sram_leak + v_logic * T.LOGIC_LEAK_W_PER_MM2)
            * s.leakage,
        ),
        Block(
            "routers", "Other", U + VU, router * s.area, router * T.LOGIC_LEAK_W_PER_MM2 * s.leakage
        ),
    ]
    core = sum(b.area_mm2 for b in out)
    f = chip.area.control_io_fraction
    ctrl = core * f / (1 - f)
    out.append(Block("control_io", "Other", 1, ctrl, ctrl * T.LOGIC_LEAK_W_PER_MM2 * s.leakage))
    return out


def area_breakdown_mm2(chip: ChipConfig) -> dict[str, float]:
    return {b.name: b.area_mm2 for b in blocks(chip)}


def unit_shares(chip: ChipConfig) -> dict[str, float]:
    return shares_of(blocks(chip))


def shares_of(bl: list[Block]) -> dict[str, float]:
    """Die-area share of each of the paper's buckets (L-Unit, H-Unit, Vector, Other)."""
    total = sum(b.area_mm2 for b in bl)
    out: dict[str, float] = {}
    for b in bl:
        out[b.unit] = out.get(b.unit, 0.0) + b.area_mm2 / total
    return out


def leakage_w(chip: ChipConfig) -> float:
    return sum(b.leakage_w for b in blocks(chip))


def ablation_um2(chip: ChipConfig) -> dict[str, float]:
    """One L-Unit cell built four ways (the paper's ablation): SRAM + compute, standard ROM +
    compute, B-ROM + compute (side by side), and the fused B-ROM cell."""
    bits = chip.rom.bits_per_cell
    conv = _logic_mm2(cell_compute_gates(chip, "rom"))
    fused = _logic_mm2(cell_compute_gates(chip, "brom"))
    rom = rom_array_mm2(bits, chip.rom.bank_rows, "rom")
    brom = rom_array_mm2(bits, chip.rom.bank_rows, "brom")
    sram = _sram_mm2(bits, chip.rom.bank_rows)
    return {
        "sram_compute": (sram + conv) * UM2_PER_MM2,
        "rom_compute": (rom + conv) * UM2_PER_MM2,
        "brom_compute": (brom + fused) * UM2_PER_MM2,
        "fused_cell": max(brom, fused) * UM2_PER_MM2,
    }
