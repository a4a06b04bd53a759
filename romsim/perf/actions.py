"""The actions the performance model counts and the components price (romsim.area.model).

One key per kind of hardware event; a count under any other key is a bug and raises instead of
being dropped. Units: ``*_bits`` bits, ``*_bytes`` bytes, ``link_bytes`` bytes x hops, the rest
operations.
"""

from __future__ import annotations

ACTIONS: tuple[str, ...] = (
    "rom_bits",  # weight (and metadata) bits read from the ROM arrays
    "l_macs",  # low-bit MACs in the fused cells
    "h_macs",  # high-precision MACs in the H-Unit (LoRA, attention)
    "h_ops",  # other H-Unit ops (softmax max/sum/scale/exp)
    "vec_ops",  # vector-unit ops (norms, RoPE, SiLU, residuals, sampling)
    "sram_read_bytes",  # LoRA weights, KV cache, optimizer state read from SRAM
    "sram_write_bytes",  # KV cache, optimizer state written
    "link_bytes",  # bytes x mesh hops
    "unit_bus_bytes",  # bytes driven across a matrix unit's activation bus to its cells
    "offchip_bytes",  # bytes over the off-chip link
    "clock_cycles",  # die clock cycles (the clock tree's leaves: flops and clock gates)
)
_KNOWN = frozenset(ACTIONS)


def check_action(key: str) -> str:
    if key not in _KNOWN:
        raise KeyError(f"unknown action {key!r}; the components price {', '.join(ACTIONS)}")
    return key
