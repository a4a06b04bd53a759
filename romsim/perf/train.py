"""Cost of one LoRA training step on the chip: forward through the frozen ROM weights, backward
(input gradients through the same ROM weights, LoRA weight gradients in the H-Unit) and the
optimizer update in SRAM."""

from __future__ import annotations

from dataclasses import dataclass

from romsim.perf.memory import ADAM_STATE_BYTES, GRAD_BYTES, lora_params, train_sram_bytes
from romsim.perf.model import PerfModel

# Backward/forward cost ratios per op group (C): a frozen matmul needs only dX (one more pass
# over the same ROM words); LoRA needs dA, dB and dX (2x); attention 2x (recompute scores
# flash-style, then dQ, dK, dV); elementwise ops 2x.
_BWD_FACTOR = {"lora": 2.0, "attn_score": 2.0, "attn_value": 2.0, "softmax": 2.0}
_BWD_DEFAULT = 1.0
_BWD_VECTOR = 2.0
_VECTOR_GROUPS = {"norm", "rope", "silu"}


@dataclass(frozen=True)
class TrainStepCost:
    time_s: float
    energy_j: float  # forward_j + backward_j + optimizer_j + leakage over time_s
    forward_s: float
    backward_s: float
    optimizer_s: float
    forward_j: float  # dynamic energy of the forward passes (batch x seq_len tokens)
    backward_j: float  # dynamic energy of the backward passes through every layer
    optimizer_j: float  # Adam: state traffic in SRAM and its vector ops
    leakage_w: float
    sram_needed_bytes: float
    sram_capacity_bytes: float
    fits: bool
    trainable_params: int


def train_step_cost(pm: PerfModel, batch: int, seq_len: int) -> TrainStepCost:
    """The one training-step model (time and energy) that ``romsim train-step`` and the
    federated devices (romsim.fl.devices) use."""
    chip, model = pm.chip, pm.model
    f = chip.clock_hz
    fwd = bwd = 0.0
    for op, n in pm.prefill_ops(seq_len):
        if op.name in ("lm_head", "sampling", "final_norm"):
            continue  # loss head handled off the ROM path (C: LoRA fine-tune of decoder layers)
        cyc = n * (op.latency_cycles + max((a for a, _ in op.stages.values()), default=0.0))
        fwd += cyc
        if op.group in _VECTOR_GROUPS:
            factor = _BWD_VECTOR
        else:
            factor = _BWD_FACTOR.get(op.group, _BWD_DEFAULT)
            if op.stages.get("h_mac", (0, 0))[0] > 0 and op.group not in _BWD_FACTOR:
                # matmul op carrying a parallel LoRA path: dX through ROM plus 2x LoRA work
                lora_cyc = op.stages["h_mac"][0]
                base = max((a for r, (a, _) in op.stages.items() if r != "h_mac"), default=0.0)
                cyc = n * (op.latency_cycles + max(base, 2 * lora_cyc))
                factor = 1.0
        bwd += factor * cyc
    p = lora_params(model, chip.lora.rank, chip.lora.targets)
    # Adam: read w, g, m, v; write w, m, v; ~10 vector ops per parameter
    d = pm.d
    state_bytes = p * (2 * chip.lora.weight_bits / 8 + GRAD_BYTES + 2 * ADAM_STATE_BYTES)
    sram_cyc = state_bytes / (d.U * chip.sram_read_bytes_per_cycle_per_unit)
    vec_cyc = p * 10 / (d.VU * chip.vector.lanes_per_unit)
    opt = max(sram_cyc, vec_cyc) + chip.vector.op_latency_cycles
    cycles = batch * (fwd + bwd) + opt
    mem = train_sram_bytes(model, chip, seq_len, batch)
    # energy: forward actions counted op by op (the clock's cycles among them); backward scaled
    # by its cycle ratio (same kinds of accesses: ROM words for dX, H-Unit MACs for LoRA and
    # attention); Adam's state traffic in SRAM, its vector ops and cycles; leakage over the step.
    from romsim.area.energy import action_energy_j, dynamic_energy_j
    from romsim.area.model import leakage_w

    e_fwd = batch * sum(dynamic_energy_j(chip, pm.prefill_events(seq_len)).values())
    e_bwd = e_fwd * bwd / fwd
    ea = action_energy_j(chip)
    e_opt = (
        state_bytes / 2 * (ea["sram_read_bytes"] + ea["sram_write_bytes"])
        + p * 10 * ea["vec_ops"]
        + opt * ea["clock_cycles"]
    )
    leak = leakage_w(chip)
    e = e_fwd + e_bwd + e_opt + leak * cycles / f
    return TrainStepCost(
        time_s=cycles / f,
        energy_j=e,
        forward_s=batch * fwd / f,
        backward_s=batch * bwd / f,
        optimizer_s=opt / f,
        forward_j=e_fwd,
        backward_j=e_bwd,
        optimizer_j=e_opt,
        leakage_w=leak,
        sram_needed_bytes=mem["total_bytes"],
        sram_capacity_bytes=mem["capacity_bytes"],
        fits=mem["total_bytes"] <= mem["capacity_bytes"],
        trainable_params=p,
    )
