"""Amaranth-simulator unit tests of the cell's sub-blocks (no external simulator needed)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth.sim import Simulator  # noqa: E402
from romsim.kernels import bitpack as bp  # noqa: E402
from romsim.rtl.cell import CodeDecoder, FusedCell, GroupAccumulator, MacArray, RowBlock  # noqa: E402
from romsim.rtl.params import CellParams, act_group_entries, split_outputs  # noqa: E402


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_decoder_matches_bitpack(bits):
    """Every code of random groups comes out of the lane the layout says, for every word."""
    p = CellParams(bits=bits, group_size=128)
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(3, 128))
    words = bp.pack_codes(codes, bits, 128).reshape(3, p.words_per_group)
    beat, lane = p.code_lane_map()
    dut = CodeDecoder(p)
    got = np.full((3, 128), -1)

    async def bench(ctx):
        for g in range(3):
            prev = 0
            for w in range(p.words_per_group):
                ctx.set(dut.word, int(words[g, w]))
                ctx.set(dut.prev, prev)
                ctx.set(dut.phase, w % p.period_words)
                lanes = [ctx.get(dut.codes[j]) for j in range(p.lanes)]
                for i in np.flatnonzero(beat == w):
                    got[g, i] = lanes[lane[i]]
                used = set(lane[beat == w].tolist())
                assert all(lanes[j] == 0 for j in range(p.lanes) if j not in used)
                prev = int(words[g, w])
                await ctx.delay(1e-9)

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(got, codes)


@pytest.mark.parametrize("wbits", [3, 8])
def test_mac_array_dot_and_sum(wbits):
    p = CellParams(bits=3)
    dut = MacArray(p, wbits)
    rng = np.random.default_rng(wbits)
    n = 20
    w = rng.integers(0, 1 << min(wbits, 3), size=(n, p.lanes))
    a = rng.integers(-127, 128, size=(n, p.lanes))
    a[0] = -128  # the most negative mantissa too
    w[0] = (1 << min(wbits, 3)) - 1
    out = []

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for k in range(n + 2):
            if k < n:
                for j in range(p.lanes):
                    ctx.set(dut.w[j], int(w[k, j]))
                    ctx.set(dut.a[j], int(a[k, j]))
            await ctx.tick()
            if k >= 1:
                out.append((ctx.get(dut.dot), ctx.get(dut.asum)))

    _run(dut, bench)
    # two register stages: the sums of input k are read after tick k+1
    got = out[:n]
    assert [d for d, _ in got] == (w * a).sum(axis=1).tolist()
    assert [s for _, s in got] == a.sum(axis=1).tolist()


def test_group_accumulator():
    p = CellParams(bits=4, acc_bits=24)
    dut = GroupAccumulator(p, 20, 12, 4)
    rng = np.random.default_rng(1)
    beats = rng.integers(-(1 << 18), 1 << 18, size=(3, 8))
    sums = rng.integers(-1000, 1000, size=(3, 8))
    res = []

    async def bench(ctx):
        for g in range(3):
            for k in range(8):
                ctx.set(dut.valid, 1)
                ctx.set(dut.first, k == 0)
                ctx.set(dut.last, k == 7)
                ctx.set(dut.tag, g + 1)
                ctx.set(dut.dot, int(beats[g, k]))
                ctx.set(dut.asum, int(sums[g, k]))
                await ctx.tick()
                if ctx.get(dut.out_valid):
                    res.append((ctx.get(dut.d), ctx.get(dut.s), ctx.get(dut.out_tag)))
            ctx.set(dut.valid, 0)  # a bubble (a metadata read) between groups
            await ctx.tick()
            if ctx.get(dut.out_valid):
                res.append((ctx.get(dut.d), ctx.get(dut.s), ctx.get(dut.out_tag)))

    _run(dut, bench)
    assert res == [(int(beats[g].sum()), int(sums[g].sum()), g + 1) for g in range(3)]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("style", ["fused", "conventional"])
def test_cell_in_amaranth_sim(bits, style):
    """Whole cell on a synthetic tile (random codes, scales, zeros; tile starting mid-row) in
    Amaranth's simulator: outputs T = D - z*S and scale bits, cycles = tokens*R + latency."""
    G, ng_row, kg0, n = 128, 3, 2, 5
    p = CellParams(bits=bits, group_size=G, n_groups=n, ng_row=ng_row, kg0=kg0)
    rng = np.random.default_rng(10 * bits)
    codes = rng.integers(0, 1 << bits, size=(n, G))
    z = rng.integers(0, 1 << bits, size=n)
    s = rng.uniform(0.001, 0.1, size=n).astype(np.float16)
    words = np.concatenate([bp.pack_codes(codes, bits, G).reshape(-1), bp.pack_meta(s, z, bits)])
    acts = rng.integers(-127, 128, size=(2, ng_row * G))
    kg = (kg0 + np.arange(n)) % ng_row
    exp = []
    for t in range(2):
        ag = acts[t].reshape(ng_row, G)[kg]
        exp.append((codes * ag).sum(1) - z * ag.sum(1))
    exp = np.concatenate(exp)
    top = RowBlock([FusedCell(p, words, style=style)], max_tokens=2)
    res = {}

    async def bench(ctx):
        for t in range(2):
            for k, e in enumerate(act_group_entries(p, acts[t])):
                ctx.set(top.act_we, 1)
                ctx.set(top.act_waddr, t * ng_row + k)
                ctx.set(top.act_wdata, e)
                await ctx.tick()
        ctx.set(top.act_we, 0)
        ctx.set(top.n_tokens, 2)
        ctx.set(top.start, 1)
        await ctx.tick()
        ctx.set(top.start, 0)
        while not ctx.get(top.done):
            await ctx.tick()
        res.update(out=ctx.get(top.out0), cnt=ctx.get(top.count0), cyc=ctx.get(top.cycles))

    _run(top, bench)
    t, sc = split_outputs(p, res["out"], res["cnt"])
    assert res["cnt"] == 2 * n
    assert np.array_equal(t, exp)
    assert np.array_equal(sc, np.tile(s.view(np.uint16), 2))
    lat = 6 if style == "fused" else 8
    assert res["cyc"] == 2 * p.rom_rows + lat
