"""One full estimate of a design: fit, prefill, decode, energy and area. Torch-free and fast
(a few milliseconds), so sweeps can call it thousands of times."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from romsim.area.energy import dynamic_energy_j
from romsim.area.model import area_breakdown_mm2, blocks, leakage_w, shares_of
from romsim.config import ChipConfig
from romsim.errors import RomsimInputError
from romsim.mapping import Mapping
from romsim.modelspec import ModelSpec
from romsim.perf.memory import (
    embed_sram_bytes,
    kv_bytes_per_token,
    lora_bytes,
    max_context_tokens,
)
from romsim.perf.model import PerfModel
from romsim.quant import model_rom_bytes
from romsim.units import GiB, MiB


@dataclass
class Estimate:
    chip: str
    model: str
    quant: str
    prompt_len: int
    gen_len: int
    decode_tokens_per_s: float  # per sequence, average over the generated tokens
    decode_tokens_per_s_empty_kv: float
    ttft_s: float
    total_latency_s: float
    throughput_tokens_per_s: float  # generated tokens / (TTFT + decode time)
    energy_per_token_j: float
    power_w: float
    area_mm2: float
    area_breakdown_mm2: dict[str, float]
    area_shares: dict[str, float]
    rom_bytes: int  # physical ROM the weights occupy (padding included)
    rom_ideal_bytes: float  # weights + metadata, no padding
    rom_capacity_bytes: int
    sram_bytes: int  # LoRA + KV cache this run needs
    sram_capacity_bytes: int
    lora_bytes: int
    kv_bytes: int
    max_context_tokens: int
    fits: bool
    fit_problems: list[str]
    utilisation: dict[str, float]
    decode_breakdown_cycles: dict[str, float]
    area_conventional_rom_mm2: float = 0.0  # the same chip with standard ROM beside the MACs
    batch: int = 1  # sequences decoded together
    decode_tokens_per_s_total: float = 0.0  # all sequences of the batch
    energy_breakdown_j: dict[str, float] = field(default_factory=dict)  # per token, by action
    leakage_w: float = 0.0
    clock_warning: str = ""  # non-empty when the clock looks unachievable at the node
    per_layer: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _gib(x: float) -> str:
    return f"{x / GiB:.2f} GiB"


def require_rom_fit(model: ModelSpec, chip: ChipConfig, mapping: Mapping) -> None:
    """Raise the one-line input error when the weights cannot be placed in the ROM at all."""
    need_rows = mapping.max_rows_per_cell
    if need_rows > chip.rom.macro_rows:
        need = mapping.rom_bytes_needed
        raise RomsimInputError(
            "model",
            model.name,
            f"at {chip.quant.label()} needs {_gib(need)} of ROM, the config has "
            f"{_gib(chip.rom_bytes)} (rom.macro_rows = {chip.rom.macro_rows}, "
            f"{need_rows} needed per cell)",
        )


def check_fit(
    model: ModelSpec, chip: ChipConfig, mapping: Mapping, context_tokens: int
) -> list[str]:
    problems = []
    need_rows = mapping.max_rows_per_cell
    if need_rows > chip.rom.macro_rows:
        need = mapping.rom_bytes_needed
        problems.append(
            f"rom: {model.name} at {chip.quant.label()} needs {_gib(need)} of ROM "
            f"({need_rows} rows per cell), the config has {_gib(chip.rom_bytes)} "
            f"({chip.rom.macro_rows} rows per cell)"
        )
    lb = lora_bytes(model, chip)
    B = chip.operating.batch
    kv = B * context_tokens * kv_bytes_per_token(model, chip)
    emb = embed_sram_bytes(model, chip)
    if lb + kv + emb > chip.sram.lora_kv_bytes:
        seqs = f"{B} x {context_tokens}" if B > 1 else f"{context_tokens}"
        extra = f" + embedding table ({emb / MiB:.1f} MiB)" if emb else ""
        problems.append(
            f"sram: LoRA rank {chip.lora.rank} ({lb / MiB:.1f} MiB) + KV cache for {seqs} "
            f"tokens ({kv / MiB:.1f} MiB){extra} need {(lb + kv + emb) / MiB:.1f} MiB, "
            f"the config has {chip.sram.lora_kv_bytes / MiB:.1f} MiB"
        )
    return problems


def _per_layer(pm: PerfModel, ctx: float) -> list[dict]:
    """Per-layer, per-op decode cost at context ``ctx``: cycles, the bounding stage and every
    stage's load (e.g. a matmul's ``h_mac`` load is its LoRA path, overlapped with the ROM path).
    LLaMA layers are identical, so one layer's ops are computed and shared by all entries."""
    from romsim.perf.ops import RESOURCES

    x = np.array([ctx])
    table = pm.decode_table
    cyc = table.op_cycles(x)[:, 0]
    loads = table.c0 + table.c1 * ctx
    ops = []
    for i, op in enumerate(table.ops):
        stages = {r: float(loads[i, j]) for j, r in enumerate(RESOURCES) if loads[i, j] > 0}
        ops.append(
            {
                "op": op.name,
                "cycles": float(cyc[i]),
                "latency_cycles": float(op.latency_cycles),
                "bound_by": max(stages, key=stages.get) if stages else "latency",
                "stage_cycles": stages,
            }
        )
    total = float(cyc.sum())
    return [{"layer": i, "decode_cycles": total, "ops": ops} for i in range(pm.model.n_layers)]


def estimate(
    model: ModelSpec,
    chip: ChipConfig,
    prompt_len: int = 128,
    gen_len: int = 128,
    per_layer: bool = True,
    perf: PerfModel | None = None,
) -> Estimate:
    if prompt_len < 1:
        raise RomsimInputError("prompt_len", prompt_len, "must be >= 1")
    if gen_len < 1:
        raise RomsimInputError("gen_len", gen_len, "must be >= 1")
    pm = perf or PerfModel(model, chip)
    f = chip.clock_hz
    ctx = prompt_len + np.arange(gen_len, dtype=np.float64)
    dec_cycles = pm.decode_cycles(ctx)
    decode_s = float(dec_cycles.sum()) / f
    ttft_s = pm.prefill_cycles(prompt_len) / f
    mid = float(prompt_len + gen_len / 2)

    # energy: decode actions at the mid context stand for the average step (actions are linear
    # in the context); one step produces one token of each of the batch's sequences
    B = pm.batch
    bl = blocks(chip)  # area, leakage and action energies of every block, computed once
    util = pm.utilisation(mid)
    leak_w = leakage_w(chip, util)
    dyn = {k: v / B for k, v in dynamic_energy_j(chip, pm.decode_events(mid)).items()}
    t_step = decode_s / gen_len
    e_tok = sum(dyn.values()) + leak_w * t_step / B

    area = {b.name: b.area_mm2 for b in bl if b.unit != "off-chip"}
    mapping = pm.mapping
    total_ctx = prompt_len + gen_len
    problems = check_fit(model, chip, mapping, total_ctx)
    lb = lora_bytes(model, chip)
    kvb = int(B * total_ctx * kv_bytes_per_token(model, chip))

    layers = _per_layer(pm, mid) if per_layer else []

    return Estimate(
        chip=chip.name,
        model=model.name,
        quant=chip.quant.label(),
        prompt_len=prompt_len,
        gen_len=gen_len,
        decode_tokens_per_s=gen_len / decode_s,
        decode_tokens_per_s_empty_kv=f / float(pm.decode_cycles(0.0)[0]),
        ttft_s=ttft_s,
        total_latency_s=ttft_s + decode_s,
        throughput_tokens_per_s=gen_len / (ttft_s + decode_s),
        energy_per_token_j=e_tok,
        power_w=e_tok * B / t_step,
        area_mm2=sum(area.values()),
        area_breakdown_mm2=area,
        area_shares=shares_of(bl),
        rom_bytes=mapping.rom_bytes_used,
        rom_ideal_bytes=model_rom_bytes(
            model, chip.quant, chip.placement.lm_head == "rom", chip.placement.embed == "rom"
        ),
        rom_capacity_bytes=chip.rom_bytes,
        sram_bytes=int(lb + kvb + embed_sram_bytes(model, chip)),
        sram_capacity_bytes=chip.sram.total_bytes,
        lora_bytes=int(lb),
        kv_bytes=kvb,
        max_context_tokens=max_context_tokens(model, chip),
        fits=not problems,
        fit_problems=problems,
        utilisation=pm.utilisation(mid),
        decode_breakdown_cycles=pm.decode_breakdown(mid),
        area_conventional_rom_mm2=sum(
            area_breakdown_mm2(chip.with_overrides(**{"rom.style": "rom"})).values()
        )
        if chip.rom.style == "brom"
        else sum(area.values()),
        batch=B,
        decode_tokens_per_s_total=B * gen_len / decode_s,
        energy_breakdown_j=dyn,
        leakage_w=leak_w,
        clock_warning=clock_warning(chip),
        per_layer=layers,
    )


# Hrishikesh et al., "The optimal logic depth per pipeline stage is 6 to 8 FO4 inverter delays",
# ISCA 2002, plus ~2 FO4 of latch overhead: a clock period below 10 FO4 cannot hold a stage.
MIN_FO4_PER_CYCLE = 10


def clock_warning(chip: ChipConfig) -> str:
    """A warning (not a refusal) when the clock period is shorter than the shallowest pipeline
    stage a node allows, or than the fused cell's pipeline needs."""
    from romsim.tech import node

    fo4_ps = node(chip.tech.process_nm).gate_delay_ps
    period_ps = 1e12 / chip.clock_hz
    fo4 = period_ps / fo4_ps
    if fo4 < MIN_FO4_PER_CYCLE:
        return (
            f"tech.clock_hz = {chip.clock_hz:.3g}: a {period_ps:.0f} ps cycle is {fo4:.1f} FO4 "
            f"delays at {chip.tech.process_nm} nm ({fo4_ps:g} ps each); a pipeline stage needs "
            f">= {MIN_FO4_PER_CYCLE} FO4 (Hrishikesh et al., ISCA 2002)"
        )
    return ""


__all__ = ["Estimate", "estimate", "check_fit", "require_rom_fit"]
