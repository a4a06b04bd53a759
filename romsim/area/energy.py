"""Dynamic energy from per-access energies times access counts, plus leakage over time."""

from __future__ import annotations

from romsim.area import tech as T
from romsim.config import ChipConfig

_PJ = 1e-12


def event_energy_j(chip: ChipConfig) -> dict[str, float]:
    """Joules per counted event at the configured node."""
    s = T.NODE_SCALE[chip.tech.process_nm].energy
    rom = T.ROM_READ_PJ_PER_BIT * (T.BROM_READ_FACTOR if chip.rom.style == "brom" else 1.0)
    return {
        "rom_bits": rom * s * _PJ,
        "l_macs": T.INT_MAC_PJ * s * _PJ,
        "h_macs": T.FP_MAC_PJ * s * _PJ,
        "h_ops": T.VEC_OP_PJ * s * _PJ,
        "vec_ops": T.VEC_OP_PJ * s * _PJ,
        "sram_read_bytes": T.SRAM_PJ_PER_BYTE * s * _PJ,
        "sram_write_bytes": T.SRAM_PJ_PER_BYTE * s * _PJ,
        "link_bytes": T.LINK_PJ_PER_BYTE_HOP * s * _PJ,
    }


def dynamic_energy_j(chip: ChipConfig, events: dict[str, float]) -> dict[str, float]:
    e = event_energy_j(chip)
    return {k: v * e[k] for k, v in events.items() if k in e}
