"""cocotb testbench of a row-block of fused cells (``romsim.rtl.cell.RowBlock``).

Driven by ``romsim.rtl.simrun``: the case file (``ROMSIM_RTL_CASE``) holds the activation
mantissas and, per cell, the kernels' expected outputs. Per run the bench writes
``ROMSIM_RTL_TOKENS`` vectors into the activation buffer (one k-group per cycle), pulses start,
lets the HDL run free until ``done`` (and ``rows_done`` when the build sums rows), then reads
every cell's captured outputs in one access each -- the integer T and scale bits, the fp32
partials -- and the fp32 row sums, compares them bit-exactly, and checks the cycle counters
against ``tokens*R + latency`` (``+ row_sum_cycles`` for the row sums).
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
from romsim.rtl.params import CellParams, act_group_entries, split_fp, split_outputs


def _load():
    z = np.load(os.environ["ROMSIM_RTL_CASE"])
    cfg = json.loads(bytes(z["cfg"]).decode())
    params = [CellParams(**d) for d in cfg["params"]]
    exp_t = [z[f"t{i}"] for i in range(len(params))]
    exp_s = [z[f"s{i}"] for i in range(len(params))]
    exp_f = [z[f"f{i}"] for i in range(len(params))]
    rows = z["rows"] if "rows" in z.files else None
    return cfg, params, z["acts"], z["exps"], exp_t, exp_s, exp_f, rows


@cocotb.test()
async def rowblock_matches_kernel(dut):
    cfg, params, acts, exps, exp_t, exp_s, exp_f, exp_rows = _load()
    tokens = min(int(os.environ.get("ROMSIM_RTL_TOKENS", "1")), cfg["max_tokens"])
    latency = int(cfg["latency"]) if "latency" in cfg else None
    p0 = params[0]
    entries = [act_group_entries(p0, a, e) for a, e in zip(acts, exps, strict=True)]
    Clock(dut.clk, 2, unit="ns").start()
    dut.rst.value = 1
    dut.start.value = 0
    dut.act_we.value = 0
    dut.n_tokens.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    mismatches = 0
    row_mismatches = 0
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
        if exp_rows is not None:
            await ReadOnly()
            if not int(dut.rows_done.value):
                await RisingEdge(dut.rows_done)
        await ReadOnly()
        cyc = int(dut.cycles.value)
        rcyc = int(dut.rows_cycles.value) if exp_rows is not None else None
        sim_cycles += (rcyc if rcyc is not None else cyc) + 1
        got = []
        for i, p in enumerate(params):
            cap = cfg["max_tokens"] * p.n_groups
            cnt = int(getattr(dut, f"count{i}").value)
            raw = getattr(dut, f"out{i}").value.to_unsigned() >> ((cap - cnt) * p.out_bits)
            rawf = getattr(dut, f"fp{i}").value.to_unsigned() >> ((cap - cnt) * 32)
            got.append((cnt, *split_outputs(p, raw, cnt), split_fp(rawf, cnt)))
        got_rows = None
        if exp_rows is not None:
            nr = exp_rows.shape[1]
            got_rows = split_fp(dut.rows.value.to_unsigned(), len(vs) * nr).reshape(len(vs), nr)
        await RisingEdge(dut.clk)
        runs.append({"vectors": vs, "cycles": cyc, "rows_cycles": rcyc})
        for i, (cnt, t, s, f) in enumerate(got):
            want_t = exp_t[i][vs].reshape(-1)
            want_s = np.tile(exp_s[i], len(vs))
            want_f = exp_f[i][vs].reshape(-1)
            if cnt != want_t.size:
                mismatches += abs(want_t.size - cnt) or 1
                first_bad.append(f"cell{i} vectors {vs}: {cnt} words, expected {want_t.size}")
                continue
            bad = np.flatnonzero((t != want_t) | (s != want_s) | (f != want_f))
            mismatches += int(bad.size)
            for k in bad[:3]:
                first_bad.append(
                    f"cell{i} vec {vs[k // params[i].n_groups]} group {k % params[i].n_groups}: "
                    f"got T={t[k]} scale={s[k]:#06x} fp32={f[k]:#010x}, kernel T={want_t[k]} "
                    f"scale={want_s[k]:#06x} fp32={want_f[k]:#010x}"
                )
        if got_rows is not None:
            want_r = exp_rows[vs]
            bad = np.argwhere(got_rows != want_r)
            row_mismatches += len(bad)
            for v, r in bad[:3]:
                first_bad.append(
                    f"row sum vec {vs[v]} row {r}: got {got_rows[v, r]:#010x}, "
                    f"reference {want_r[v, r]:#010x}"
                )
    wall = time.perf_counter() - t_wall
    exp_cycles = [tokens_cycles(p, len(r["vectors"]), cfg) for r in runs for p in params[:1]]
    mismatches += row_mismatches
    res = {
        "mismatches": mismatches,
        "row_mismatches": row_mismatches,
        "rows_checked": 0 if exp_rows is None else int(exp_rows.size),
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
    if exp_rows is not None:
        extra = int(cfg["row_sum_cycles"])
        bad_rc = [
            (r["rows_cycles"], r["cycles"]) for r in runs if r["rows_cycles"] != r["cycles"] + extra
        ]
        assert not bad_rc, f"row-sum cycles != cycles + {extra}: {bad_rc[:5]}"


def tokens_cycles(p: CellParams, tokens: int, cfg: dict) -> int | None:
    """Cycles the row-block should take: its busiest cell's ``tokens*R + latency``."""
    if "latency" not in cfg:
        return None
    params = [CellParams(**d) for d in cfg["params"]]
    return max(tokens * q.rom_rows for q in params) + int(cfg["latency"])
