"""Amaranth-simulator unit tests of the cell's sub-blocks (no external simulator needed)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth.sim import Simulator  # noqa: E402
from romsim.kernels.dequant_ref import dequant_f32, group_partials, rowblock_sums  # noqa: E402
from romsim.kernels.qmatmul import QTensor, combine_int, int_group_dots  # noqa: E402
from romsim.rtl.cell import (  # noqa: E402
    CodeDecoder,
    FusedCell,
    GroupAccumulator,
    MacArray,
    RowBlock,
)
from romsim.rtl.fp import Dequant, Fp32Add  # noqa: E402
from romsim.rtl.params import (  # noqa: E402
    LATENCY_CYCLES,
    ROW_SUM_CYCLES,
    CellParams,
    act_group_entries,
    split_fp,
    split_outputs,
)

from romsim.rom.image import run_words  # noqa: E402


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("word_bits", [64, 32])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_decoder_matches_layout(bits, word_bits):
    """Every code of random groups comes out of the lane the layout says, for every word."""
    p = CellParams(bits=bits, group_size=128, word_bits=word_bits)
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(3, 128))
    words = p.layout.pack_codes(codes).reshape(3, p.words_per_group)
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
def test_mac_array_dot(wbits):
    """Weights are q - z (signed, wbits + 1 bits)."""
    p = CellParams(bits=3)
    dut = MacArray(p, wbits)
    rng = np.random.default_rng(wbits)
    n = 20
    top = (1 << min(wbits, 3)) - 1
    w = rng.integers(-top, top + 1, size=(n, p.lanes))
    a = rng.integers(-127, 128, size=(n, p.lanes))
    a[0] = -128  # the most negative mantissa too
    w[0] = -top
    w[1] = top
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
                out.append(ctx.get(dut.dot))

    _run(dut, bench)
    # two register stages: the sum of input k is read after tick k+1
    assert out[:n] == (w * a).sum(axis=1).tolist()


def test_group_accumulator():
    p = CellParams(bits=4, acc_bits=24)
    dut = GroupAccumulator(p, 20, 4)
    rng = np.random.default_rng(1)
    beats = rng.integers(-(1 << 18), 1 << 18, size=(3, 8))
    res = []

    async def bench(ctx):
        for g in range(3):
            for k in range(8):
                ctx.set(dut.valid, 1)
                ctx.set(dut.first, k == 0)
                ctx.set(dut.last, k == 7)
                ctx.set(dut.tag, g + 1)
                ctx.set(dut.dot, int(beats[g, k]))
                await ctx.tick()
                if ctx.get(dut.out_valid):
                    res.append((ctx.get(dut.t), ctx.get(dut.out_tag)))
            ctx.set(dut.valid, 0)  # a bubble (a metadata read) between groups
            await ctx.tick()
            if ctx.get(dut.out_valid):
                res.append((ctx.get(dut.t), ctx.get(dut.out_tag)))

    _run(dut, bench)
    assert res == [(int(beats[g].sum()), g + 1) for g in range(3)]


def _comb_vectors(dut, inputs, n):
    got = []

    async def bench(ctx):
        for i in range(n):
            for port, vals in inputs.items():
                ctx.set(getattr(dut, port), int(vals[i]))
            await ctx.delay(1e-9)
            got.append(ctx.get(dut.out))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return np.array(got, np.uint32)


def test_dequant_unit_matches_kernel_rounding():
    """fp32(T) * fp16 scale * 2**e, RNE: every bit equal to the kernel's numpy fp32 operations,
    including fp16 subnormal scales, subnormal results (second rounding), 2**e = 0 and
    overflow to inf."""
    n = 1200
    rng = np.random.default_rng(0)
    t = rng.integers(-(1 << 23) + 1, 1 << 23, size=n)
    t[:60] = rng.integers(-5, 6, size=60)
    s = rng.integers(0, 1 << 16, size=n).astype(np.uint16)
    s[((s >> 10) & 31) == 31] &= 0xFBFF  # finite scales only
    e = rng.integers(-160, 128, size=n)
    e[100:500] = rng.integers(-175, -100, size=400)
    want = dequant_f32(t, s.view(np.float16), e).view(np.uint32)
    got = _comb_vectors(Dequant(), {"t": t, "s16": s, "e": e}, n)
    assert np.isinf(want.view(np.float32)).any() and (want & 0x7F800000 == 0).sum() > 50
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(t[k], hex(s[k]), e[k], hex(got[k]), hex(want[k])) for k in bad[:5]]


def test_fp32_adder_matches_numpy():
    n = 1500
    rng = np.random.default_rng(1)
    a = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    b[:300] = (a[:300] ^ 0x80000000) + rng.integers(-3, 4, size=300).astype(np.uint32)
    b[300:600] = a[300:600] + rng.integers(-(1 << 24), 1 << 24, size=300).astype(np.uint32)
    a[600:700] = rng.integers(0, 1 << 24, size=100)  # subnormals
    b[600:700] = rng.integers(0, 1 << 24, size=100) | (
        rng.integers(0, 2, size=100).astype(np.uint32) << 31
    )
    a[700:704] = [0x80000000, 0, 0x7F800000, 0x7F800000]
    b[700:704] = [0x80000000, 0x80000000, 0xFF800000, 5]
    with np.errstate(all="ignore"):
        want = (a.view(np.float32) + b.view(np.float32)).view(np.uint32)
    got = _comb_vectors(Fp32Add(), {"a": a, "b": b}, n)
    nan = np.isnan(want.view(np.float32)) & np.isnan(got.view(np.float32))
    bad = np.flatnonzero((got != want) & ~nan)
    assert bad.size == 0, [(hex(a[k]), hex(b[k]), hex(got[k]), hex(want[k])) for k in bad[:5]]


def _synthetic_block(bits, runs, ng_row, seed, n_tok=2, word_bits=64):
    """Random codes/scales/zeros of a matrix with ``ng_row`` groups per row; cells holding the
    consecutive group ``runs`` in ``word_bits``-wide words; activations with exponents
    (subnormal and large results too)."""
    G = 128
    rng = np.random.default_rng(seed)
    n_rows = -(-runs[-1][1] // ng_row)
    codes = rng.integers(0, 1 << bits, size=(n_rows, ng_row * G))
    z = rng.integers(0, 1 << bits, size=(n_rows, ng_row))
    s = rng.uniform(0.001, 0.1, size=(n_rows, ng_row)).astype(np.float16)
    s[0, 0] = np.float16(3e-6)  # an fp16 subnormal scale
    qt = QTensor.from_affine(codes, s, z, bits, G)
    acts = rng.integers(-127, 128, size=(n_tok, ng_row * G))
    e = rng.integers(-20, 5, size=(n_tok, ng_row))
    e[0, 0], e[-1, -1] = -140, 90
    cells = []
    for a, b in runs:
        p = CellParams(
            bits=bits,
            group_size=G,
            word_bits=word_bits,
            n_groups=b - a,
            ng_row=ng_row,
            kg0=a % ng_row,
        )
        words = run_words(qt, a, b, word_bits)
        assert words.size == p.rom_rows
        cells.append((p, words))
    return qt, cells, acts, e


async def _drive(ctx, top, p, acts, e, n_tok):
    for t in range(n_tok):
        for k, ent in enumerate(act_group_entries(p, acts[t], e[t])):
            ctx.set(top.act_we, 1)
            ctx.set(top.act_waddr, t * p.ng_row + k)
            ctx.set(top.act_wdata, ent)
            await ctx.tick()
    ctx.set(top.act_we, 0)
    ctx.set(top.n_tokens, n_tok)
    ctx.set(top.start, 1)
    await ctx.tick()
    ctx.set(top.start, 0)


@pytest.mark.parametrize(
    "bits,style,word_bits",
    [(b, s, 64) for b in (2, 3, 4, 8) for s in ("fused", "conventional")]
    + [(b, "fused", 32) for b in (2, 3, 4, 8)],
)
def test_cell_in_amaranth_sim(bits, style, word_bits):
    """Whole cell on a synthetic tile (random codes, scales, zeros; tile starting mid-row) in
    Amaranth's simulator: integer T, scale bits and the fp32 partial equal the kernel's, cycles =
    tokens*R + latency; also with 32-bit ROM words (the kernel's codes repacked by
    romsim.rom.layout, one metadata field per word)."""
    qt, cells, acts, e = _synthetic_block(bits, [(2, 7)], 3, 10 * bits, word_bits=word_bits)
    ((p, words),) = cells
    n = p.n_groups
    top = RowBlock([FusedCell(p, words, style=style)], max_tokens=2)
    res = {}

    async def bench(ctx):
        await _drive(ctx, top, p, acts, e, 2)
        while not ctx.get(top.done):
            await ctx.tick()
        res.update(
            out=ctx.get(top.out0),
            fp=ctx.get(top.fp0),
            cnt=ctx.get(top.count0),
            cyc=ctx.get(top.cycles),
        )

    _run(top, bench)
    want_t, want_p = group_partials(qt, acts, e, 2, 7)
    t, sc = split_outputs(p, res["out"], res["cnt"])
    assert res["cnt"] == 2 * n
    assert np.array_equal(t, want_t.reshape(-1))
    s16 = qt.scale.reshape(-1)[2:7].astype(np.float16).view(np.uint16)
    assert np.array_equal(sc, np.tile(s16, 2))
    assert np.array_equal(split_fp(res["fp"], res["cnt"]), want_p.reshape(-1).view(np.uint32))
    assert res["cyc"] == 2 * p.rom_rows + LATENCY_CYCLES[style]


@pytest.mark.parametrize("bits,runs", [(4, [(1, 5), (5, 8), (8, 15)]), (2, [(0, 3), (3, 6)])])
def test_rowblock_row_sums_amaranth(bits, runs):
    """Row sums of cells holding consecutive runs (rows split across two cells and rows whole in
    one cell) = dequant_ref.rowblock_sums bit for bit; a row held whole by one cell = the
    kernel's combine_int, bit for bit."""
    ng_row = 3
    qt, cells, acts, e = _synthetic_block(bits, runs, ng_row, 5 + bits)
    top = RowBlock([FusedCell(p, w) for p, w in cells], max_tokens=2, row_sums=True)
    res = {}

    async def bench(ctx):
        await _drive(ctx, top, cells[0][0], acts, e, 2)
        while not ctx.get(top.rows_done):
            await ctx.tick()
        res.update(rows=ctx.get(top.rows), cyc=ctx.get(top.rows_cycles), cc=ctx.get(top.cycles))

    _run(top, bench)
    r0, want = rowblock_sums(qt, acts, e, runs)
    got = split_fp(res["rows"], 2 * top.n_rows).reshape(2, top.n_rows)
    assert np.array_equal(got, want.view(np.uint32))
    d, s = int_group_dots(qt, acts)
    ker = combine_int(qt, d, s, e)
    whole = 0
    for r, parts in enumerate(top.pieces):
        g0, g1 = (r0 + r) * ng_row, (r0 + r + 1) * ng_row
        if len(parts) == 1 and runs[0][0] <= g0 and g1 <= runs[-1][1]:
            whole += 1
            assert np.array_equal(got[:, r], ker[:, r0 + r].view(np.uint32))
    assert whole >= 1
    assert res["cyc"] == res["cc"] + ROW_SUM_CYCLES
