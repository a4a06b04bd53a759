"""Accelerator configuration: validated data loaded from TOML presets or user files.

Every physical default carries its source in docs/constants.md; the paper's chip lives in the
presets ``roma-3b-w4`` and ``roma-8b-w2`` (romsim/presets/*.toml).
"""

from __future__ import annotations

import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from romsim.errors import RomsimInputError, from_validation_error
from romsim.modelspec import LINEAR_KINDS
from romsim.paths import read_user_text
from romsim.quant import QuantSpec, WeightFormat, named_format, named_quant


class _Strict(BaseModel):
    # NaN and +-inf are refused everywhere: a non-finite chip value has no physical meaning.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Upper bounds: physical plausibility limits, each far above any published design, so that a
# typo (1e18 MACs, a 10**9-cycle latency) is refused instead of printed as a result. Each bounded
# field's description says why (the one-line error quotes it).
MAX_LATENCY_CYCLES = 1 << 16
WHY_LATENCY = "no on-chip op, hop or barrier takes 65k cycles; even a DRAM access takes ~100s"
MAX_LANES = 1 << 16
WHY_LANES = "a TPU v4 MXU has 16,384 MACs; this allows 4x that per unit"
MAX_PORT_BYTES = 1 << 12
WHY_PORT = "32 kbit per cycle per unit port, 16x ROMA's 2048-bit links"
MAX_SRAM_BYTES = 64 << 30
WHY_SRAM = "Cerebras WSE-3 holds 44 GB of SRAM on a whole wafer"


class TechConfig(_Strict):
    process_nm: int = Field(
        7, description="technology node in nm: one of romsim/tech/nodes.toml's nodes"
    )
    clock_hz: float = Field(
        500e6,
        ge=1e6,
        le=6e9,
        description="1 MHz .. 6 GHz (the fastest shipped CPUs boost to ~6 GHz)",
    )

    @field_validator("process_nm")
    @classmethod
    def _node_in_table(cls, v: int) -> int:
        from romsim.tech import nodes_nm

        if v not in nodes_nm():
            raise ValueError(f"the technology table has {', '.join(map(str, nodes_nm()))} nm")
        return v


class MeshConfig(_Strict):
    """2-D mesh of units: ``vector_rows`` rows of vector units, the rest matrix units."""

    rows: int = Field(17, ge=1, le=1024)
    cols: int = Field(16, ge=1, le=1024)
    vector_rows: int = Field(
        1, ge=1, description="norms, softmax and activations run on vector units: at least one row"
    )

    @model_validator(mode="after")
    def _check(self) -> MeshConfig:
        if self.vector_rows >= self.rows:
            raise ValueError(f"vector_rows ({self.vector_rows}) must be < rows ({self.rows})")
        return self

    @property
    def matrix_units(self) -> int:
        return (self.rows - self.vector_rows) * self.cols

    @property
    def vector_units(self) -> int:
        return self.vector_rows * self.cols


class RomConfig(_Strict):
    """The ROM macro inside one fused cell."""

    style: Literal["brom", "rom", "logic"] = Field(
        "brom",
        description="brom: B-ROM fused with its compute (ROMA); rom: a standard ROM macro beside "
        "the compute; logic: weights synthesized as standard-cell logic",
    )
    logic_zero_bit_fraction: float | None = Field(
        None,
        ge=0,
        le=1,
        description="logic ROM: fraction of stored bits that are 0 (no gate); default: measured "
        "from the real quantized weights (SmolLM2) when no value is given",
    )
    macro_rows: int = Field(9728, ge=16, le=1 << 20, description="words (rows) per cell")
    word_bits: int = Field(64, ge=8, le=1024, description="bits per ROM word = read width")
    reads_per_cycle: int = Field(1, ge=1, le=8)
    bank_rows: int = Field(
        1216, ge=16, le=1 << 20, description="rows per physical sub-macro (sets array efficiency)"
    )

    @property
    def bits_per_cell(self) -> int:
        return self.macro_rows * self.word_bits


class FusedCellConfig(_Strict):
    cells_per_unit: int = Field(96, ge=1, le=65536)
    mac_weight_bits_per_cycle: int = Field(
        64, ge=8, le=4096, description="weight bits the MAC array consumes per cycle"
    )
    act_bits: int = Field(8, ge=2, le=16)
    acc_bits: int = Field(32, ge=8, le=64)
    weight_reuse_tokens: int = Field(
        1,
        ge=1,
        le=4096,
        description="tokens one ROM read serves (operand registers holding a word while the "
        "MACs take the next tokens' activations); 1: each word streams straight into the MACs",
    )
    pipeline_depth_cycles: int = Field(6, ge=1, le=256)
    adder_tree_cycles: int | None = Field(
        None,
        ge=0,
        le=64,
        description="pipelined reduction across a unit's cells; default ceil(log2(cells_per_unit))"
        " stages, one per level of a binary tree (7 for 96 cells)",
    )

    @property
    def tree_cycles(self) -> int:
        """Stages of the reduction tree across the unit's cells (configured or derived)."""
        if self.adder_tree_cycles is not None:
            return self.adder_tree_cycles
        return max(0, (self.cells_per_unit - 1).bit_length())


class HUnitConfig(_Strict):
    """High-precision compute beside each matrix unit: LoRA and attention."""

    macs_per_unit_per_cycle: int = Field(256, ge=1, le=MAX_LANES, description=WHY_LANES)
    op_latency_cycles: int = Field(8, ge=0, le=MAX_LATENCY_CYCLES, description=WHY_LATENCY)
    sfu_lanes_per_unit: int = Field(
        16, ge=1, le=MAX_LANES, description=f"exp lanes for softmax; {WHY_LANES}"
    )
    token_block: int = Field(
        64, ge=1, le=1 << 16, description="tokens sharing one fetch of LoRA/KV data"
    )


class SramConfig(_Strict):
    lora_kv_bytes: int = Field(
        288 << 20, ge=0, le=MAX_SRAM_BYTES, description=f"LoRA adapters + KV cache; {WHY_SRAM}"
    )
    act_bytes: int = Field(
        16 << 20, ge=0, le=MAX_SRAM_BYTES, description=f"activations / scratch; {WHY_SRAM}"
    )
    read_bytes_per_cycle_per_unit: int | None = Field(
        None,
        ge=1,
        le=MAX_PORT_BYTES,
        description=f"default: every LoRA/KV macro of a unit delivers one word per cycle; {WHY_PORT}",
    )
    write_bytes_per_cycle_per_unit: int | None = Field(
        None, ge=1, le=MAX_PORT_BYTES, description=f"default: as reads; {WHY_PORT}"
    )
    kv_bits: int = Field(8, ge=4, le=16, description="KV cache element bits")
    kv_group: int = Field(8, ge=1, le=4096, description="KV elements sharing one exponent")
    kv_exp_bits: int = Field(8, ge=0, le=16)

    @property
    def total_bytes(self) -> int:
        return self.lora_kv_bytes + self.act_bytes


class AreaConfig(_Strict):
    """Layout choices that only the area model sees."""

    h_sram_macro_rows: int = Field(
        16384, ge=128, le=1 << 20, description="depth of LoRA/KV SRAM macros"
    )
    act_sram_macro_rows: int = Field(
        4096, ge=128, le=1 << 20, description="depth of activation SRAM macros"
    )
    unit_buffer_bytes: int = Field(
        16384, ge=0, le=1 << 30, description="activation buffer per matrix unit"
    )
    control_io_fraction: float = Field(0.045, ge=0, lt=1, description="control, clocking, IO")


class VectorConfig(_Strict):
    lanes_per_unit: int = Field(64, ge=1, le=MAX_LANES, description=WHY_LANES)
    sfu_lanes_per_unit: int = Field(
        16, ge=1, le=MAX_LANES, description=f"exp/rsqrt/sigmoid lanes; {WHY_LANES}"
    )
    op_latency_cycles: int = Field(12, ge=0, le=MAX_LATENCY_CYCLES, description=WHY_LATENCY)


class InterconnectConfig(_Strict):
    link_bytes_per_cycle: int = Field(32, ge=1, le=MAX_PORT_BYTES, description=WHY_PORT)
    hop_latency_cycles: int = Field(2, ge=0, le=MAX_LATENCY_CYCLES, description=WHY_LATENCY)
    sync_cycles_per_op: int = Field(
        0, ge=0, le=MAX_LATENCY_CYCLES, description=f"barrier per mesh-wide op; {WHY_LATENCY}"
    )


class LoraConfig(_Strict):
    rank: int = Field(16, ge=0, le=4096)
    alpha: float = Field(32.0, gt=0, le=1e6)
    targets: tuple[str, ...] = Field(LINEAR_KINDS, min_length=1)
    weight_bits: Literal[8, 16, 32] = 8

    @model_validator(mode="after")
    def _check(self) -> LoraConfig:
        for t in self.targets:
            if t not in LINEAR_KINDS:
                raise ValueError(f"unknown LoRA target {t!r}; allowed: {', '.join(LINEAR_KINDS)}")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"LoRA targets repeat a layer: {list(self.targets)}")
        return self


class OperatingConfig(_Strict):
    """How the chip is run: sequences decoded together, idle units power-gated."""

    batch: int = Field(
        1, ge=1, le=4096, description="sequences decoded together (each ROM read serves all)"
    )
    power_gating: bool = Field(
        False, description="gate idle units' supply: leakage only while busy, plus the overhead"
    )
    clock_gating: bool = Field(
        True,
        description="gate idle registers' clock (integrated clock gates, one per 32 flops): "
        "flops clocked only while their block works; false: every flop every cycle",
    )
    junction_temp_c: float = Field(
        25.0,
        ge=25.0,
        le=125.0,
        description="junction temperature for leakage (C): 25 is the corner of the ASAP7 library "
        "values; hotter scales off-currents by NeuroSim's tables (FinFET 7 nm curve at 16 nm and "
        "below, PTM curves above; up to 125 C, their 400 K)",
    )


class OffChipConfig(_Strict):
    """The link to memory outside the chip, used by whatever placement puts there (an off-chip
    LM head or embedding table)."""

    bandwidth_bytes_per_s: float = Field(
        51.2e9,
        gt=0,
        le=10e12,
        description="LPDDR5X-6400 x64: 51.2 GB/s (JEDEC JESD209-5B); at most 10 TB/s (HBM3E x4)",
    )
    energy_pj_per_bit: float = Field(
        4.0,
        gt=0,
        le=100,
        description="about 4 pJ/bit for HBM2/LPDDR-class DRAM access and I/O (O'Connor et al., "
        "Fine-Grained DRAM, MICRO 2017: HBM2 3.9 pJ/bit)",
    )


class PlacementConfig(_Strict):
    """Where the vocabulary tables (vocab x hidden) live. ``lm_head``: the output projection (a
    matmul). ``embed``: the input embedding, read one row (hidden weights) per token: in ROM at
    ``quant.overrides.embed``'s format (a tied table placed in ROM for both is stored once, at
    the LM head's format: romsim.quant.tied_table_format), in the LoRA/KV SRAM at
    ``embed_bits`` per weight (it shrinks the room left for LoRA and KV), or off chip (the
    host sends the embedded token; the default, as in the ROMA figures, which count the decoder
    linears only)."""

    lm_head: Literal["rom", "off_chip"] = "rom"
    embed: Literal["rom", "sram", "off_chip"] = "off_chip"
    embed_bits: Literal[8, 16] = Field(
        16, description="bits per weight of the embedding table outside ROM (SRAM or off chip)"
    )


class ChipConfig(_Strict):
    name: str = "custom"
    description: str = ""
    model: str = "llama-3.2-3b"
    quant: QuantSpec = QuantSpec()
    tech: TechConfig = TechConfig()
    mesh: MeshConfig = MeshConfig()
    rom: RomConfig = RomConfig()
    cell: FusedCellConfig = FusedCellConfig()
    h_unit: HUnitConfig = HUnitConfig()
    sram: SramConfig = SramConfig()
    vector: VectorConfig = VectorConfig()
    interconnect: InterconnectConfig = InterconnectConfig()
    lora: LoraConfig = LoraConfig()
    placement: PlacementConfig = PlacementConfig()
    area: AreaConfig = AreaConfig()
    operating: OperatingConfig = OperatingConfig()
    offchip: OffChipConfig = OffChipConfig()

    @property
    def n_cells(self) -> int:
        return self.mesh.matrix_units * self.cell.cells_per_unit

    @property
    def sram_macros_per_unit(self) -> int:
        """LoRA/KV SRAM macros beside each matrix unit (``area.h_sram_macro_rows`` deep, one
        ROM-word wide, as the paper's N x 64 compiler macros)."""
        macro_bytes = self.area.h_sram_macro_rows * self.rom.word_bits / 8
        per_unit = self.sram.lora_kv_bytes / max(self.mesh.matrix_units, 1)
        return max(1, math.ceil(per_unit / macro_bytes))

    @property
    def sram_read_bytes_per_cycle_per_unit(self) -> int:
        """The configured port width, or all of a unit's macros read in parallel."""
        v = self.sram.read_bytes_per_cycle_per_unit
        return v if v is not None else self.sram_macros_per_unit * self.rom.word_bits // 8

    @property
    def sram_write_bytes_per_cycle_per_unit(self) -> int:
        v = self.sram.write_bytes_per_cycle_per_unit
        return v if v is not None else self.sram_read_bytes_per_cycle_per_unit

    @property
    def rom_bytes(self) -> int:
        return self.n_cells * self.rom.bits_per_cell // 8

    @property
    def clock_hz(self) -> float:
        return self.tech.clock_hz

    def with_overrides(self, **updates: Any) -> ChipConfig:
        """A copy with dotted-key overrides, validated: ``with_overrides(**{"cell.cells_per_unit": 64})``."""
        data = self.model_dump()
        for key, val in updates.items():
            node = data
            parts = key.split(".")
            for p in parts[:-1]:
                if p not in node or not isinstance(node[p], dict):
                    raise RomsimInputError(key, val, "unknown config key")
                node = node[p]
            if parts[-1] not in node:
                raise RomsimInputError(key, val, "unknown config key")
            node[parts[-1]] = val
        return chip_from_dict(data, source="override")


def _quant_from_toml(q: Any) -> Any:
    """TOML may give ``quant = "w4g128"`` or a table with default/overrides, whose formats may
    be tables or single-format names (``default = "w3g128+w6x0.25"``, ``overrides.embed =
    "w4g128"``)."""
    if isinstance(q, str):
        return named_quant(q).model_dump()
    if not isinstance(q, dict):
        raise RomsimInputError(
            "quant", q, 'must be a format name (quant = "w4g128") or a table [quant]'
        )
    q = dict(q)
    if isinstance(q.get("default"), str):
        q["default"] = named_format(q["default"]).model_dump()
    if isinstance(q.get("overrides"), dict):
        q["overrides"] = {
            k: named_format(v).model_dump() if isinstance(v, str) else v
            for k, v in q["overrides"].items()
        }
    return q


def chip_from_dict(data: dict, source: str = "<dict>") -> ChipConfig:
    data = dict(data)
    if "quant" in data:
        try:
            data["quant"] = _quant_from_toml(data["quant"])
        except RomsimInputError as e:
            raise RomsimInputError(e.field, e.value, e.rule, e.source or source) from None
    try:
        return ChipConfig.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e, source, ChipConfig) from None


def presets() -> dict[str, Path]:
    root = resources.files("romsim.presets")
    return {
        e.name[: -len(".toml")]: Path(str(e))
        for e in sorted(root.iterdir(), key=lambda x: x.name)
        if e.name.endswith(".toml")
    }


def load_chip(path_or_preset: str) -> ChipConfig:
    """A shipped preset by name, or a user TOML file (which may name ``base = "<preset>"``)."""
    ps = presets()
    if path_or_preset in ps:
        path = ps[path_or_preset]
    else:
        path = Path(path_or_preset)
        if not path.exists():
            raise RomsimInputError(
                "config", path_or_preset, f"is neither a preset ({', '.join(ps)}) nor a file"
            )
    try:
        data = tomllib.loads(read_user_text(path, "config", "TOML"))
    except tomllib.TOMLDecodeError as e:
        raise RomsimInputError("config", str(path), f"is not valid TOML ({e})") from None
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or base not in ps:
            raise RomsimInputError("base", base, f"must name a preset ({', '.join(ps)})", str(path))
        merged = _deep_merge(tomllib.loads(ps[base].read_text()), data)
        merged.pop("base", None)
        data = merged
    return chip_from_dict(data, source=str(path))


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "quant":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


__all__ = ["ChipConfig", "WeightFormat", "load_chip", "presets", "chip_from_dict"]
