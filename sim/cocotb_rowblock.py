"""cocotb testbench of a row-block of fused cells (``romsim.rtl.cell.RowBlock``).

Driven by ``romsim.rtl.simrun``: the case file (``ROMSIM_RTL_CASE``) holds the activation
mantissas and, per cell, the kernels' expected outputs. Per run the bench writes
``ROMSIM_RTL_TOKENS`` vectors into the activation buffer (one k-group per cycle), pulses start,
lets the HDL run free until ``done``, then reads every cell's captured partial sums in one access
and compares them bit-exactly, and checks the cycle counter against ``tokens*R + latency``.
Results go to ``ROMSIM_RTL_RESULT`` (JSON).
"""

from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from romsim.rtl.params import CellParams, act_group_entries, split_outputs


def _load():
    z = np.load(os.environ["ROMSIM_RTL_CASE"])
    cfg = json.loads(bytes(z["cfg"]).decode())
    params = [CellParams(**d) for d in cfg["params"]]
    exp_t = [z[f"t{i}"] for i in range(len(params))]
    exp_s = [z[f"s{i}"] for i in range(len(params))]
    return cfg, params, z["acts"], exp_t, exp_s


@cocotb.test()
async def rowblock_matches_kernel(dut):
    cfg, params, acts, exp_t, exp_s = _load()
    tokens = min(int(os.environ.get("ROMSIM_RTL_TOKENS", "1")), cfg["max_tokens"])
    latency = int(cfg["latency"]) if "latency" in cfg else None
    p0 = params[0]
    entries = [act_group_entries(p0, a) for a in acts]  # outside the timed loop
    Clock(dut.clk, 2, unit="ns").start()
    dut.rst.value = 1
    dut.start.value = 0
    dut.act_we.value = 0
    dut.n_tokens.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    mismatches = 0
    first_bad: list[str] = []
    runs = []
    sim_cycles = 0
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
        dut.n_tokens.value = len(vs)
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        await RisingEdge(dut.done)
        await ReadOnly()
        cyc = int(dut.cycles.value)
        sim_cycles += cyc + 1
        got = []
        for i, p in enumerate(params):
            cap = cfg["max_tokens"] * p.n_groups
            cnt = int(getattr(dut, f"count{i}").value)
            raw = getattr(dut, f"out{i}").value.to_unsigned() >> ((cap - cnt) * p.out_bits)
            got.append((cnt, *split_outputs(p, raw, cnt)))
        await RisingEdge(dut.clk)
        runs.append({"vectors": vs, "cycles": cyc})
        for i, (cnt, t, s) in enumerate(got):
            want_t = exp_t[i][vs].reshape(-1)
            want_s = np.tile(exp_s[i], len(vs))
            if cnt != want_t.size:
                mismatches += abs(want_t.size - cnt) or 1
                first_bad.append(f"cell{i} vectors {vs}: {cnt} words, expected {want_t.size}")
                continue
            bad = np.flatnonzero((t != want_t) | (s != want_s))
            mismatches += int(bad.size)
            for k in bad[:3]:
                first_bad.append(
                    f"cell{i} vec {vs[k // params[i].n_groups]} group {k % params[i].n_groups}: "
                    f"got T={t[k]} scale={s[k]:#06x}, kernel T={want_t[k]} scale={want_s[k]:#06x}"
                )
    wall = time.perf_counter() - t_wall
    exp_cycles = [tokens_cycles(p, len(r["vectors"]), cfg) for r in runs for p in params[:1]]
    res = {
        "mismatches": mismatches,
        "first_mismatches": first_bad[:10],
        "vectors": len(acts),
        "words_checked": int(sum(e.size for e in exp_t)),
        "runs": runs,
        "cycles_expected": exp_cycles,
        "sim_cycles": sim_cycles,
        "wall_s": wall,
        "cycles_per_s": sim_cycles / wall if wall else 0.0,
        "cell_cycles_per_s": sim_cycles * len(params) / wall if wall else 0.0,
        "latency": latency,
    }
    with open(os.environ["ROMSIM_RTL_RESULT"], "w") as f:
        json.dump(res, f, indent=1)
    assert mismatches == 0, "; ".join(first_bad[:5])
    bad_cyc = [
        (r["cycles"], e)
        for r, e in zip(runs, exp_cycles, strict=True)
        if e is not None and r["cycles"] != e
    ]
    assert not bad_cyc, f"cycle counts (measured, expected) differ: {bad_cyc[:5]}"


def tokens_cycles(p: CellParams, tokens: int, cfg: dict) -> int | None:
    """Cycles the row-block should take: its busiest cell's ``tokens*R + latency``."""
    if "latency" not in cfg:
        return None
    params = [CellParams(**d) for d in cfg["params"]]
    return max(tokens * q.rom_rows for q in params) + int(cfg["latency"])
