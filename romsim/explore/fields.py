"""The estimate fields a design is judged by (objectives, constraints, outputs), shared by the
batched evaluator and its scalar reference (``romsim.estimate.estimate``)."""

from __future__ import annotations

# field -> (Estimate attribute or derived name, unit, better: "max" | "min" | None)
FIELDS: dict[str, tuple[str, str | None]] = {
    "decode_tokens_per_s": ("tokens/s", "max"),
    "decode_tokens_per_s_total": ("tokens/s", "max"),
    "ttft_s": ("s", "min"),
    "energy_per_token_j": ("J", "min"),
    "energy_per_token_mj": ("mJ", "min"),
    "power_w": ("W", "min"),
    "area_mm2": ("mm²", "min"),
    "tokens_per_s_per_mm2": ("tokens/s/mm²", "max"),
    "rom_bytes": ("B", None),
    "rom_capacity_bytes": ("B", None),
    "sram_bytes": ("B", None),
    "max_context_tokens": ("tokens", "max"),
    "fits_rom": ("bool", None),
    "fits_sram": ("bool", None),
    "train_step_energy_j": ("J", "min"),
    "train_step_time_s": ("s", "min"),
}


def scalar_fields(model, chip, prompt_len: int, gen_len: int, train: bool = False) -> dict:
    """Every field of one design from the scalar model (the reference the batched evaluator
    must equal)."""
    from romsim.estimate import estimate

    e = estimate(model, chip, prompt_len, gen_len, per_layer=False)
    rom_fit = not any(p.startswith("rom:") for p in e.fit_problems)
    sram_fit = not any(p.startswith("sram:") for p in e.fit_problems)
    out = {
        "decode_tokens_per_s": e.decode_tokens_per_s,
        "decode_tokens_per_s_total": e.decode_tokens_per_s_total,
        "ttft_s": e.ttft_s,
        "energy_per_token_j": e.energy_per_token_j,
        "energy_per_token_mj": e.energy_per_token_j * 1e3,
        "power_w": e.power_w,
        "area_mm2": e.area_mm2,
        "tokens_per_s_per_mm2": e.decode_tokens_per_s_total / e.area_mm2,
        "rom_bytes": float(e.rom_bytes),
        "rom_capacity_bytes": float(e.rom_capacity_bytes),
        "sram_bytes": float(e.sram_bytes),
        "max_context_tokens": float(e.max_context_tokens),
        "fits_rom": rom_fit,
        "fits_sram": sram_fit,
    }
    if train:
        from romsim.perf.model import PerfModel
        from romsim.perf.train import train_step_cost

        c = train_step_cost(PerfModel(model, chip), 1, prompt_len)
        out["train_step_energy_j"] = c.energy_j
        out["train_step_time_s"] = c.time_s
    return out
