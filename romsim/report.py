"""Rich tables for humans (the CLI's non-JSON output)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from romsim.config import ChipConfig
from romsim.estimate import Estimate
from romsim.units import GB, MiB


def print_estimate(
    est: Estimate, chip: ChipConfig, detail: bool = False, console: Console | None = None
) -> None:
    con = console or Console()
    t = Table(
        title=f"{est.model} ({est.quant}) on {est.chip}: prompt {est.prompt_len}, generate {est.gen_len}"
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    per_user = " per sequence" if est.batch > 1 else ""
    rows = [
        (f"decode tokens/s{per_user} (avg over generation)", f"{est.decode_tokens_per_s:,.0f}"),
        ("decode tokens/s (empty KV cache)", f"{est.decode_tokens_per_s_empty_kv:,.0f}"),
        *(
            [("decode tokens/s, all sequences", f"{est.decode_tokens_per_s_total:,.0f}")]
            if est.batch > 1
            else []
        ),
        ("time to first token", f"{est.ttft_s * 1e3:.3f} ms"),
        ("end-to-end throughput", f"{est.throughput_tokens_per_s:,.0f} tokens/s"),
        ("energy per token", f"{est.energy_per_token_j * 1e3:.3f} mJ"),
        ("power (decode)", f"{est.power_w:.1f} W"),
        ("die area", f"{est.area_mm2:.1f} mm²"),
        ("die area with conventional ROM", f"{est.area_conventional_rom_mm2:.1f} mm²"),
        ("ROM used / capacity", f"{est.rom_bytes / GB:.3f} / {est.rom_capacity_bytes / GB:.3f} GB"),
        (
            "SRAM LoRA+KV needed / capacity",
            f"{est.sram_bytes / MiB:.1f} / {chip.sram.lora_kv_bytes / MiB:.1f} MiB",
        ),
        ("longest context that fits", f"{est.max_context_tokens:,} tokens"),
        ("fits", "[green]yes[/]" if est.fits else "[red]no[/]"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    con.print(t)
    for p in est.fit_problems:
        con.print(f"[red]does not fit:[/] {p}", soft_wrap=True)
    if est.clock_warning:
        con.print(f"[yellow]warning:[/] {est.clock_warning}", soft_wrap=True)
    a = Table(title="area (mm²)")
    a.add_column("block")
    a.add_column("mm²", justify="right")
    for k, v in est.area_breakdown_mm2.items():
        a.add_row(k, f"{v:.2f}")
    con.print(a)
    if detail:
        b = Table(title="decode cycles per token by op (all layers)")
        b.add_column("op")
        b.add_column("cycles", justify="right")
        b.add_column("share", justify="right")
        tot = sum(est.decode_breakdown_cycles.values())
        for k, v in sorted(est.decode_breakdown_cycles.items(), key=lambda kv: -kv[1]):
            b.add_row(k, f"{v:,.0f}", f"{v / tot:.1%}")
        con.print(b)
        u = Table(title="utilisation during decode")
        u.add_column("resource")
        u.add_column("busy", justify="right")
        for k, v in est.utilisation.items():
            u.add_row(k, f"{v:.1%}")
        con.print(u)
        e = Table(title="energy per token by action (µJ)")
        e.add_column("action")
        e.add_column("µJ", justify="right")
        e.add_column("share", justify="right")
        leak_j = est.energy_per_token_j - sum(est.energy_breakdown_j.values())
        parts = {**est.energy_breakdown_j, "leakage": leak_j}
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
            if v > 0:
                e.add_row(k, f"{v * 1e6:,.1f}", f"{v / est.energy_per_token_j:.1%}")
        con.print(e)


def print_style_comparison(results: dict[str, Estimate], console: Console | None = None) -> None:
    """One row per ROM style of the same model and chip."""
    con = console or Console()
    first = next(iter(results.values()))
    t = Table(title=f"{first.model} ({first.quant}) on {first.chip}: ROM styles")
    for col in ("style", "area mm²", "fused cells mm²", "decode tok/s", "mJ/token", "power W"):
        t.add_column(col, justify="right" if col != "style" else "left")
    for style, e in results.items():
        t.add_row(
            style,
            f"{e.area_mm2:.1f}",
            f"{e.area_breakdown_mm2['fused_cells']:.1f}",
            f"{e.decode_tokens_per_s:,.0f}",
            f"{e.energy_per_token_j * 1e3:.3f}",
            f"{e.power_w:.1f}",
        )
    con.print(t)
