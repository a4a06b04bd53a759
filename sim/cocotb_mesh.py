"""cocotb testbench of a mesh slice (``romsim.rtl.mesh.MeshSlice``): the vector row broadcasts
the activation vectors (one k-group entry per cycle) over the links to every matrix unit,
starts them, and collects each unit's fp32 row sums at its port; every sum is compared bit for
bit with the kernel GEMV (``qmatmul(path="int")``) and ``cycles`` recorded. Case file
``ROMSIM_RTL_CASE`` (acts, exps, rows{u}, cfg), result JSON ``ROMSIM_RTL_RESULT``."""

from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from romsim.rtl.params import CellParams, act_group_entries, split_fp


@cocotb.test()
async def mesh_matches_kernel(dut):
    z = np.load(os.environ["ROMSIM_RTL_CASE"])
    cfg = json.loads(bytes(z["cfg"]).decode())
    p0 = CellParams(**cfg["params"][0])
    acts, exps = z["acts"], z["exps"]
    n_units = len(cfg["n_rows"])
    want = [z[f"rows{u}"] for u in range(n_units)]
    tokens = int(cfg["tokens_per_run"])
    entries = [act_group_entries(p0, a, e) for a, e in zip(acts, exps, strict=True)]
    Clock(dut.clk, 2, unit="ns").start()
    dut.rst.value = 1
    dut.start.value = 0
    dut.act_we.value = 0
    dut.n_tokens.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    mismatches, first_bad, runs, sim_cycles = 0, [], [], 0
    t_wall = time.perf_counter()
    for v0 in range(0, len(acts), tokens):
        vs = list(range(v0, min(v0 + tokens, len(acts))))
        for ti, v in enumerate(vs):
            for kg, e in enumerate(entries[v]):
                dut.act_we.value = 1
                dut.act_waddr.value = ti * p0.ng_row + kg
                dut.act_wdata.value = e
                await RisingEdge(dut.clk)
                sim_cycles += 1
        dut.act_we.value = 0
        # the broadcast's last write is in flight on the links; the start follows it
        dut.n_tokens.value = len(vs)
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        await ClockCycles(dut.clk, 1)
        await ReadOnly()
        if not int(dut.done.value):
            await RisingEdge(dut.done)
            await ReadOnly()
        cyc = int(dut.cycles.value)
        sim_cycles += cyc + 1
        for u in range(n_units):
            nr = cfg["n_rows"][u]
            got = split_fp(getattr(dut, f"rows{u}").value.to_unsigned(), len(vs) * nr)
            got = got.reshape(len(vs), nr)
            bad = np.argwhere(got != want[u][vs])
            mismatches += len(bad)
            for v, r in bad[:3]:
                first_bad.append(
                    f"unit {u} vec {vs[v]} row {r}: got {got[v, r]:#010x}, "
                    f"kernel {want[u][vs[v], r]:#010x}"
                )
        await RisingEdge(dut.clk)
        runs.append({"vectors": vs, "cycles": cyc})
    wall = time.perf_counter() - t_wall
    n_cells = len(cfg["params"])
    res = {
        "mismatches": mismatches,
        "first_mismatches": first_bad[:10],
        "rows_checked": int(sum(w.size for w in want)),
        "runs": runs,
        "sim_cycles": sim_cycles,
        "wall_s": wall,
        "cell_cycles_per_s": sim_cycles * n_cells / wall if wall else 0.0,
        "cells": n_cells,
    }
    with open(os.environ["ROMSIM_RTL_RESULT"], "w") as f:
        json.dump(res, f, indent=1)
    assert mismatches == 0, "; ".join(first_bad[:5])
