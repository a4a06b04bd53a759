"""SRAM budgets: LoRA adapters, KV cache, an SRAM-resident embedding table, training state; and
the bytes one embedding lookup reads. Pure arithmetic on model + chip."""

from __future__ import annotations

from dataclasses import dataclass

from romsim.config import ChipConfig
from romsim.modelspec import LINEAR_KINDS, ModelSpec
from romsim.quant import WeightFormat, tied_table_format
from romsim.rom.layout import RomLayout


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


def embed_sram_bytes(model: ModelSpec, chip: ChipConfig) -> int:
    """Bytes of the input embedding table in the LoRA/KV SRAM (``placement.embed = "sram"``,
    ``placement.embed_bits`` per weight, no per-row metadata), else 0. A tied table whose
    LM head is in ROM still takes this copy when the embedding is placed in SRAM."""
    if chip.placement.embed != "sram":
        return 0
    return model.vocab_size * model.hidden_size * chip.placement.embed_bits // 8


def embed_rom_format(model: ModelSpec, chip: ChipConfig) -> WeightFormat | None:
    """The ROM format the embedding lookup reads (None unless ``placement.embed = "rom"``): a
    tied table stored once as the LM head has its format, else ``quant.for_kind("embed")``."""
    if chip.placement.embed != "rom":
        return None
    if model.tie_word_embeddings and chip.placement.lm_head == "rom":
        return tied_table_format(chip.quant)
    return chip.quant.for_kind("embed")


@dataclass(frozen=True)
class EmbedRead:
    """What one token's embedding lookup reads on chip: a row read (``hidden`` weights), not a
    matmul."""

    placement: str  # "rom", "sram" or "off_chip"
    rom_words: float  # ROM words read (0 unless in ROM); metadata at its packing density
    rom_bits: float  # rom_words * rom.word_bits (the energy model's ROM-bit count)
    sram_read_bytes: float  # SRAM bytes read (0 unless in SRAM)
    offchip_read_bytes: float  # bytes fetched over the off-chip link (0 unless off chip)

    @property
    def bytes(self) -> float:
        """On-chip bytes read per token, whichever on-chip memory holds the table."""
        return self.rom_bits / 8 + self.sram_read_bytes


def embed_read_per_token(model: ModelSpec, chip: ChipConfig) -> EmbedRead:
    """The reads of one embedding lookup. In ROM a row is ``ceil(hidden / G)`` row-major groups
    (contiguous, so in one or two cells): their code words plus their metadata at its packing
    density (:meth:`romsim.rom.layout.RomLayout.dense_words`; a mix weighs its classes by their
    fractions). In SRAM: ``hidden * embed_bits / 8`` bytes. Off chip: the same row over the
    off-chip link (``offchip_read_bytes``; the ROMA figures charge nothing for it)."""
    place = chip.placement.embed
    fmt = embed_rom_format(model, chip)
    if fmt is not None:
        w = chip.rom.word_bits
        gpr = -(-model.hidden_size // fmt.group_size)
        words = sum(
            RomLayout.for_format(f, w).dense_words(gpr * share) for f, share in fmt.classes()
        )
        return EmbedRead(place, float(words), float(words * w), 0.0, 0.0)
    row_bytes = model.hidden_size * chip.placement.embed_bits / 8
    if place == "sram":
        return EmbedRead(place, 0.0, 0.0, row_bytes, 0.0)
    return EmbedRead(place, 0.0, 0.0, 0.0, row_bytes)


def embed_read_bytes_per_token(model: ModelSpec, chip: ChipConfig) -> float:
    """On-chip bytes one token's embedding lookup reads (ROM or SRAM; 0 off chip)."""
    return embed_read_per_token(model, chip).bytes


def max_context_tokens(model: ModelSpec, chip: ChipConfig, sram_bytes: int | None = None) -> int:
    """Longest KV cache per sequence that fits beside the LoRA adapters (and an SRAM-resident
    embedding table) in the LoRA/KV SRAM, with ``operating.batch`` sequences cached (0 if none)."""
    cap = chip.sram.lora_kv_bytes if sram_bytes is None else sram_bytes
    free = cap - lora_bytes(model, chip) - embed_sram_bytes(model, chip)
    per_token = kv_bytes_per_token(model, chip) * chip.operating.batch
    return max(0, int(free // per_token))


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
