"""The 2x2 mesh slice running SmolLM2-135M layer-0 ``k`` (shared by sim/test_mesh_cocotb.py and
bench/bench_rtl_sim.py): build, golden rows from the kernel GEMV, cycles of the perf model and
of romsim.perf.cyclesim for the same op."""

from __future__ import annotations

import json

import numpy as np
import rtl_cases
from romsim.rtl import simrun
from romsim.rtl.mesh import emit_mesh
from romsim.rtl.params import LATENCY_CYCLES, ROW_SUM_CYCLES

# units 0, 1 (mesh row above the vector row) and 4, 5 (below) of the 3 x 4 mesh: a 2 x 2 slice
SLICE_UNITS = (0, 1, 4, 5)


def slice_tiles(bits: int = 4, matrix: str = "k", units=SLICE_UNITS, cpu: int = 8):
    return [
        rtl_cases.tiles_for(bits, [(0, matrix, cpu * u + c, cpu) for c in range(cpu)])
        for u in units
    ]


def kernel_rows(tiles, acts) -> list[np.ndarray]:
    """Per unit: the kernel GEMV (qmatmul int path) of the rows it holds (whole rows only)."""
    from romsim.kernels.qmatmul import _pow2_f32, qmatmul

    a, e = acts
    qt = tiles[0][0].qt
    ng = qt.n_groups
    s = a.reshape(a.shape[0], ng, -1).sum(axis=2, dtype=np.int32)
    y = qmatmul(qt, np.zeros((a.shape[0], qt.k), np.float32), path="int", act=(a, s, _pow2_f32(e)))
    out = []
    for ts in tiles:
        g0, g1 = ts[0].start, ts[-1].stop
        if g0 % ng or g1 % ng:
            raise ValueError("the slice test needs units holding whole rows")
        out.append(y[:, g0 // ng : g1 // ng])
    return out


def run_slice(
    sim: str, workdir, *, bits: int = 4, n_random: int = 1, tokens: int = 2, build_dir=None
) -> tuple[dict, dict]:
    tiles = slice_tiles(bits)
    mc = model_cycles_for(tiles)
    params = [[t.params() for t in ts] for ts in tiles]
    words = [[t.words for t in ts] for ts in tiles]
    b, n_rows = emit_mesh(
        params,
        words,
        mc["hops"],
        hop_latency=mc["hop_latency"],
        max_tokens=tokens,
        build_dir=build_dir,
        meta={"tiles": [[t.spec for t in ts] for ts in tiles]},
    )
    acts = rtl_cases.acts_for(tiles[0][0], n_random, seed=3)
    rows = kernel_rows(tiles, acts)
    arrays = {"acts": np.asarray(acts[0], np.int64), "exps": np.asarray(acts[1], np.int64)}
    for u, r in enumerate(rows):
        arrays[f"rows{u}"] = np.asarray(r, np.float32).view(np.uint32)
    cfg = {
        "params": [{k: v for k, v in p.__dict__.items() if k != "_derived"} for p in b.params],
        "n_rows": n_rows,
        "tokens_per_run": tokens,
    }
    arrays["cfg"] = np.frombuffer(json.dumps(cfg).encode(), np.uint8)
    workdir.mkdir(parents=True, exist_ok=True)
    case = workdir / "case.npz"
    np.savez(case, **arrays)
    res = simrun.run_case(sim, b, case, workdir / f"result_{sim}.json", tb_module="cocotb_mesh")
    R = max(t.params().rom_rows for ts in tiles for t in ts)
    mc["rtl_formula"] = {
        n: n * R
        + LATENCY_CYCLES["fused"]
        + ROW_SUM_CYCLES
        + 2 * max(mc["hops"]) * mc["hop_latency"]
        for n in (1, tokens)
    }
    mc["rom_rows"] = R
    return res, mc


def model_cycles_for(tiles) -> dict:
    from romsim.rtl.tile import small_chip

    t0 = tiles[0][0]
    return _model_cycles_chip(t0, small_chip(t0.mt.fmt.bits))


def _model_cycles_chip(t0, chip) -> dict:
    from romsim.modelspec import load_model
    from romsim.perf.cyclesim import (
        _unit_geometry,
        analytical_matmul_cycles,
        simulate_matmul_cycles,
    )
    from romsim.perf.model import PerfModel

    pm = PerfModel(load_model(t0.model), chip)
    mt = pm.layer_tiles[t0.matrix]
    _, hops = _unit_geometry(pm)
    op = pm._matmul("x", "x", [mt], 1)
    return {
        "perf_model": float(analytical_matmul_cycles(pm, [mt])),
        "perf_model_terms": {
            "latency": op.latency_cycles,
            **{k: v[0] for k, v in op.stages.items()},
        },
        "cyclesim": float(simulate_matmul_cycles(pm, [mt])),
        "hops": [int(hops[u]) for u in SLICE_UNITS],
        "hop_latency": chip.interconnect.hop_latency_cycles,
        "adder_tree_cycles": chip.cell.tree_cycles,
        "pipeline_depth_cycles": chip.cell.pipeline_depth_cycles,
    }
