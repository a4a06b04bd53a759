"""Helpers shared by the cocotb pytest files and bench/: build a row-block of real tiles, make
its case file (activations + kernel outputs) and run it on a simulator."""

from __future__ import annotations

import numpy as np
from romsim.rtl import simrun
from romsim.rtl.emit import emit_rowblock
from romsim.rtl.tile import Tile, make_tile, small_chip

MODEL = "smollm2-135m"


def tiles_for(bits: int, specs: list[tuple[int, str, int, int]]) -> list[Tile]:
    """``specs``: (layer, matrix, cell, cells_per_unit) -- the chip is the 3 x 4 mesh with that
    many cells per unit (8: the default, groups divide evenly; 7: uneven runs, tiles starting
    mid-row)."""
    out = []
    for layer, matrix, cell, cpu in specs:
        chip = small_chip(bits, cell={"cells_per_unit": cpu})
        out.append(make_tile(MODEL, layer, matrix, cell, bits=bits, chip=chip))
    return out


def acts_for(tile: Tile, n_random: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int8 mantissas [V, Kp], group exponents [V, ng_row]): 3 real vectors, then random."""
    real = tile.real_acts(3)
    rnd = tile.random_acts(n_random, seed=seed)
    if real is None:
        return rnd
    return np.concatenate([real[0], rnd[0]]), np.concatenate([real[1], rnd[1]])


def run_rowblock(
    sim: str,
    tiles: list[Tile],
    acts: tuple[np.ndarray, np.ndarray],
    workdir,
    *,
    style: str = "fused",
    row_sums: bool = False,
    max_tokens: int = 2,
    tokens_per_run: int = 2,
    corrupt: tuple[int, int, int] | None = None,
    check: bool = True,
    build_dir=None,
) -> tuple[dict, object]:
    """Build (cached) and run. ``acts`` = (mantissas, exponents). ``corrupt = (cell, word,
    xor_mask)`` flips bits of one ROM word in the Verilog while the expected outputs stay the
    kernel's. ``row_sums``: the tiles are consecutive cells of one matrix; the row-block's fp32
    row sums are checked against ``romsim.kernels.dequant_ref.rowblock_sums``."""
    a, e = acts
    words = [t.words.copy() for t in tiles]
    if corrupt is not None:
        c, w, mask = corrupt
        words[c][w] ^= np.uint64(mask)
    params = [t.params() for t in tiles]
    b = emit_rowblock(
        params,
        words,
        style=style,
        max_tokens=max_tokens,
        row_sums=row_sums,
        build_dir=build_dir,
        meta={"tiles": [t.spec for t in tiles], "source": tiles[0].source},
    )
    gold = [t.golden(a, e) for t in tiles]
    rows = None
    if row_sums:
        from romsim.kernels.dequant_ref import rowblock_sums

        _, rows = rowblock_sums(tiles[0].qt, a, e, [(t.start, t.stop) for t in tiles])
    case = workdir / "case.npz"
    simrun.write_case(
        case,
        b,
        a,
        e,
        [g[0] for g in gold],
        [g[1] for g in gold],
        [g[2] for g in gold],
        [t.perf_cycles() for t in tiles],
        rows=rows,
    )
    res = simrun.run_case(
        sim, b, case, workdir / f"result_{sim}.json", tokens_per_run=tokens_per_run, check=check
    )
    return res, b


def cycle_agreement(bits_list=(2, 3, 4, 8), tokens: int = 2) -> list[dict]:
    """RTL cycles (Amaranth simulator, fused and conventional) vs the performance model for
    layer-0 tiles of SmolLM2-135M on the 64- and 56-cell test chips."""
    from amaranth.sim import Simulator
    from romsim.rtl.cell import FusedCell, RowBlock
    from romsim.rtl.params import act_group_entries

    rows = []
    specs = [(0, "k", 5, 8), (0, "q", 5, 8), (0, "down", 17, 8), (0, "v", 11, 7), (0, "up", 3, 7)]
    for bits in bits_list:
        for spec in specs:
            (t,) = tiles_for(bits, [spec])
            acts, exps = t.random_acts(tokens, seed=bits)
            row = {
                "bits": bits,
                "tile": t.spec,
                "cells_per_unit": spec[3],
                "groups": t.n_groups,
                "rom_rows": int(t.mt.rom_rows(t.n_groups)),
                "tokens": tokens,
                "perf_cycles": t.perf_cycles(tokens),
            }
            for style in ("fused", "conventional"):
                p = t.params()
                top = RowBlock([FusedCell(p, t.words, style=style)], max_tokens=tokens)
                res = {}

                async def bench(ctx, top=top, p=p, acts=acts, exps=exps, res=res):
                    for k in range(tokens):
                        for g, e in enumerate(act_group_entries(p, acts[k], exps[k])):
                            ctx.set(top.act_we, 1)
                            ctx.set(top.act_waddr, k * p.ng_row + g)
                            ctx.set(top.act_wdata, e)
                            await ctx.tick()
                    ctx.set(top.act_we, 0)
                    ctx.set(top.n_tokens, tokens)
                    ctx.set(top.start, 1)
                    await ctx.tick()
                    ctx.set(top.start, 0)
                    while not ctx.get(top.done):
                        await ctx.tick()
                    res["cycles"] = ctx.get(top.cycles)

                sim = Simulator(top)
                sim.add_clock(1e-9)
                sim.add_testbench(bench)
                sim.run()
                row[f"rtl_{style}"] = res["cycles"]
            rows.append(row)
    return rows


def run_multicell(sim: str, cell: int, bits: int, workdir, *, build_dir=None) -> dict:
    """One cell holding every matrix of SmolLM2-135M layer 0 on the 64-cell test chip (one-layer
    mapping, lm_head off chip): per matrix one real activation vector, selected by ``sel``."""
    import json

    from romsim.rtl.emit import emit_multicell
    from romsim.rtl.params import LATENCY_CYCLES
    from romsim.rtl.tile import layer_cell_tiles

    tiles, words = layer_cell_tiles(MODEL, 0, cell, bits)
    params = [t.params() for t in tiles]
    b = emit_multicell(params, words, build_dir=build_dir, meta={"tiles": [t.spec for t in tiles]})
    arrays = {}
    for i, t in enumerate(tiles):
        acts = t.real_acts(1) or t.random_acts(1, seed=i)
        a, e = acts[0][:1], acts[1][:1]
        gt, gs, gf = t.golden(a, e)
        arrays |= {f"a{i}": a[0], f"e{i}": e[0], f"t{i}": gt[0], f"s{i}": gs, f"f{i}": gf[0]}
    cfg = {
        "params": [{k: v for k, v in b.params[0].__dict__.items() if k != "_derived"}],
        "tiles": [{k: v for k, v in p.__dict__.items() if k != "_derived"} for p in params],
        "names": [t.mt.name for t in tiles],
        "latency": LATENCY_CYCLES["fused"],
    }
    arrays["cfg"] = np.frombuffer(json.dumps(cfg).encode(), np.uint8)
    case = workdir / "case.npz"
    np.savez(case, **arrays)
    return simrun.run_case(
        sim, b, case, workdir / f"result_{sim}.json", tb_module="cocotb_multicell"
    ), tiles
