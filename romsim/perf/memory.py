"""SRAM budgets: LoRA adapters, KV cache, training state. Pure arithmetic on model + chip."""

from __future__ import annotations

from romsim.config import ChipConfig
from romsim.modelspec import LINEAR_KINDS, ModelSpec


def lora_params(
    model: ModelSpec, rank: int, targets: tuple[str, ...], layers: int | None = None
) -> int:
    """Parameters of LoRA A (r x K) and B (N x r) on ``targets`` in ``layers`` layers."""
    per_layer = sum(rank * sum(model.linear_shape(k)) for k in targets if k in LINEAR_KINDS)
    return per_layer * (model.n_layers if layers is None else layers)


def lora_bytes(model: ModelSpec, chip: ChipConfig, layers: int | None = None) -> int:
    return (
        lora_params(model, chip.lora.rank, chip.lora.targets, layers) * chip.lora.weight_bits // 8
    )


def kv_bytes_per_token(model: ModelSpec, chip: ChipConfig) -> float:
    s = chip.sram
    return model.kv_elems_per_token() * (s.kv_bits + s.kv_exp_bits / s.kv_group) / 8


def max_context_tokens(model: ModelSpec, chip: ChipConfig, sram_bytes: int | None = None) -> int:
    """Longest KV cache that fits beside the LoRA adapters in the LoRA/KV SRAM (0 if none)."""
    cap = chip.sram.lora_kv_bytes if sram_bytes is None else sram_bytes
    free = cap - lora_bytes(model, chip)
    return max(0, int(free // kv_bytes_per_token(model, chip)))


# Training state per LoRA parameter (bytes): weight (lora.weight_bits), fp16 gradient,
# fp16 Adam first and second moments (C: on-device optimizers keep 16-bit state).
GRAD_BYTES = 2
ADAM_STATE_BYTES = 4
ACT_SAVE_BYTES = 2  # saved activations for backward in bf16


def train_saved_act_bytes_per_token(model: ModelSpec, chip: ChipConfig, layers: int) -> float:
    """Activations one token keeps for the backward pass through ``layers`` LoRA layers:
    inputs of the adapted matmuls, the LoRA bottlenecks, norm and SiLU inputs, softmax stats."""
    m = model
    per_layer = (
        m.hidden_size * 2  # two RMSNorm inputs
        + m.hidden_size  # qkv input (normed)
        + m.q_dim  # o input
        + m.hidden_size  # gate/up input
        + 2 * m.intermediate_size  # gate and up outputs (SiLU backward)
        + m.intermediate_size  # down input
        + chip.lora.rank * len(chip.lora.targets)  # LoRA bottlenecks x A^T
        + m.n_heads * 2  # softmax max and sum (flash-style recomputation)
    )
    return per_layer * layers * ACT_SAVE_BYTES


def train_sram_bytes(
    model: ModelSpec, chip: ChipConfig, seq_len: int, batch: int = 1, layers: int | None = None
) -> dict[str, float]:
    """SRAM a LoRA training step needs. Sequences of a batch run one after another with
    gradient accumulation, so activations are held for one sequence only."""
    layers = model.n_layers if layers is None else layers
    p = lora_params(model, chip.lora.rank, chip.lora.targets, layers)
    w = p * chip.lora.weight_bits / 8
    state = p * (GRAD_BYTES + ADAM_STATE_BYTES)
    acts = seq_len * train_saved_act_bytes_per_token(model, chip, layers)
    kv = seq_len * kv_bytes_per_token(model, chip)
    total = w + state + acts + kv
    return {
        "lora_weights_bytes": w,
        "grad_and_optimizer_bytes": state,
        "saved_activations_bytes": acts,
        "kv_bytes": kv,
        "total_bytes": total,
        "capacity_bytes": float(chip.sram.total_bytes),
        "batch": float(batch),
    }
