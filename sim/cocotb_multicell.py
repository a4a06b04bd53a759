"""cocotb testbench of one fused cell holding every matrix of a layer (``FusedCell(tiles=...)``
in a ``RowBlock`` with a ``sel`` input). For each matrix in ROM order: write that matrix's
activation vector (its K's k-groups), select the matrix, start, run free until ``done``, compare
every T / scale / fp32 partial with the kernels' and the cycles with ``R_matrix + latency``."""

from __future__ import annotations

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from romsim.rtl.params import CellParams, act_group_entries, split_fp, split_outputs


@cocotb.test()
async def multicell_walks_matrices(dut):
    z = np.load(os.environ["ROMSIM_RTL_CASE"])
    cfg = json.loads(bytes(z["cfg"]).decode())
    env = CellParams(**cfg["params"][0])
    tiles = [CellParams(**d) for d in cfg["tiles"]]
    Clock(dut.clk, 2, unit="ns").start()
    dut.rst.value = 1
    dut.start.value = 0
    dut.act_we.value = 0
    dut.n_tokens.value = 0
    dut.sel.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    mismatches, bad, runs = 0, [], []
    for mi, q in enumerate(tiles):
        a = z[f"a{mi}"]
        for kg, ent in enumerate(act_group_entries(q, a, z[f"e{mi}"])):
            dut.act_we.value = 1
            dut.act_waddr.value = kg
            dut.act_wdata.value = ent
            await RisingEdge(dut.clk)
        dut.act_we.value = 0
        dut.sel.value = mi
        dut.n_tokens.value = 1
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        await RisingEdge(dut.done)
        await ReadOnly()
        cyc = int(dut.cycles.value)
        cnt = int(dut.count0.value)
        cap = env.n_groups
        raw = dut.out0.value.to_unsigned() >> ((cap - cnt) * env.out_bits)
        rawf = dut.fp0.value.to_unsigned() >> ((cap - cnt) * 32)
        t, s = split_outputs(env, raw, cnt)
        f = split_fp(rawf, cnt)
        await RisingEdge(dut.clk)
        want = q.rom_rows + int(cfg["latency"])
        runs.append({"matrix": cfg["names"][mi], "cycles": cyc, "expected": want, "words": cnt})
        wt, ws, wf = z[f"t{mi}"], z[f"s{mi}"], z[f"f{mi}"]
        if cnt != wt.size:
            mismatches += 1
            bad.append(f"{cfg['names'][mi]}: {cnt} words, expected {wt.size}")
            continue
        idx = np.flatnonzero((t != wt) | (s != ws) | (f != wf))
        mismatches += int(idx.size) + int(cyc != want)
        bad += [f"{cfg['names'][mi]} group {k}: T {t[k]} vs {wt[k]}" for k in idx[:3]]
        if cyc != want:
            bad.append(f"{cfg['names'][mi]}: {cyc} cycles, expected {want}")
    with open(os.environ["ROMSIM_RTL_RESULT"], "w") as fh:
        json.dump({"mismatches": mismatches, "first_mismatches": bad[:10], "runs": runs}, fh)
    assert mismatches == 0, "; ".join(bad[:5])
