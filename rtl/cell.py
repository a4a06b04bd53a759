"""Amaranth generator of the fused cell (B-ROM + compute) and its conventional counterpart.

Blocks (each an ``amaranth.lib.wiring.Component``):

* :class:`CodeDecoder`   -- one ROM word (+ the previous word, for 3-bit codes) -> ``lanes`` codes.
* :class:`MacArray`      -- ``lanes`` products ``(q - z) x m`` (zero point folded into the
  weight in the decode stage), registered, then an adder tree (registered): the beat's dot.
* :class:`GroupAccumulator` -- sums beats into the group's ``T = sum (q - z)*m`` (= D - z*S).
* :class:`CellCore`      -- address generator + the above + the fp32 dequantizer
  (:func:`romsim.rtl.fp.dequant_expr`: ``fp32(T) * s * 2**e`` with the kernel's roundings); talks
  to a ROM read port and to the unit's activation buffer; emits one fp32 partial per group (and
  shows ``T`` / the scale bits unregistered for cross-checks). With ``tiles`` it holds several
  matrices and a ``sel`` input picks the one a start walks.
* :class:`FusedCell`     -- CellCore + its tile(s) as a ROM (``amaranth.lib.memory`` with init).
* :class:`ConventionalCell` -- the same function as a standard ROM macro (registered output) plus
  a separate MAC block with an input register and generic 9-bit signed weight multipliers.
* :class:`RowBlock`      -- the unit around one or more cells: the activation buffer (written one
  k-group per cycle, mantissas + exponent), the cells of one matrix row-block, output capture, a
  cycle counter and optionally the unit's fp32 row reduction (``row_sums``).

Timing of a cell, ``R`` = tile words (codes + metadata): a token takes ``R`` cycles (one ROM read
per cycle, metadata words included) and the last fp32 partial appears ``R + 6`` cycles after the
start cycle (address latch, ROM access, decode + multiply, adder tree, group accumulate,
dequantize) -- ``rom_rows + pipeline_depth_cycles``, exactly what ``romsim.perf`` charges. The
conventional cell adds 2 cycles (ROM output register, MAC input register). Row sums: the last one
``ROW_SUM_CYCLES`` (3) after the last partial.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .fp import dequant_expr, fp32_add_expr
from .params import (
    EXP_BITS,
    LATENCY_CYCLES,
    SCALE_BITS,
    TERNARY_TABLE,
    CellParams,
    nf4_fixed_table,
)

LATENCY_FUSED = LATENCY_CYCLES["fused"]
# FusedCell's ROM: "memory" = amaranth.lib.memory (behavioural, the reference); "brom" / "rom" =
# the structural arrays of romsim.rtl.brom (B-ROM, standard NOR-array ROM)
ROM_STYLES_CELL = ("memory", "brom", "rom")
LATENCY_CONVENTIONAL = LATENCY_CYCLES["conventional"]


def _w(n: int) -> int:
    return max(1, ceil_log2(max(n, 2)))


class CodeDecoder(wiring.Component):
    """Combinational: ``word`` (and ``prev``, the group's previous word) -> ``codes`` for the
    word's ``phase`` within the code period. Unused lanes give 0."""

    def __init__(self, p: CellParams):
        self.p = p
        super().__init__(
            {
                "word": In(p.word_bits),
                "prev": In(p.word_bits),
                "phase": In(_w(p.period_words)),
                "codes": Out(data.ArrayLayout(p.bits, p.lanes)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        p = self.p
        b, w = p.bits, p.word_bits
        window = Cat(self.prev, self.word)  # prev = bits [W(ph-1), W ph) of the period

        if p.packing == "base3":  # rule 3b: byte k -> its 5 base-3 digits (a 243-entry LUT)
            lut = []
            for v in range(256):
                x = v if v < 243 else 121  # 243..255 are never written: digits 1 (trit 0)
                digs = 0
                for i in range(5):
                    digs |= (x % 3) << (2 * i)
                    x //= 3
                lut.append(Const(digs, 10))
            table = Array(lut)
            for k in range(w // 8):
                dg = Signal(10, name=f"b3_{k}")
                m.d.comb += dg.eq(table[self.word[8 * k : 8 * k + 8]])
                for i in range(5):
                    m.d.comb += self.codes[5 * k + i].eq(dg[2 * i : 2 * i + 2])
            return m

        def assign(ph):
            a, stop = p.phase_codes(ph)
            for j in range(p.lanes):
                i = a + j
                if i < stop:
                    off = i * b - w * ph + w
                    m.d.comb += self.codes[j].eq(window[off : off + b])
                else:
                    m.d.comb += self.codes[j].eq(0)

        if p.period_words == 1:
            assign(0)
        else:
            with m.Switch(self.phase):
                for ph in range(p.period_words):
                    with m.Case(ph):
                        assign(ph)
        return m


class MacArray(wiring.Component):
    """``lanes`` multipliers (``wbits + 1``-bit signed weight ``q - z`` x ``act_bits`` signed
    activation), products registered, then an adder tree registered: ``dot`` valid two cycles
    after the inputs. ``wbits`` = the code width in the fused cell, 8 in the conventional MAC
    block (generic 9-bit signed weights)."""

    def __init__(self, p: CellParams, wbits: int):
        self.p = p
        self.wbits = wbits
        L, A = p.lanes, p.act_bits
        self.prod_bits = wbits + 1 + A
        self.dot_bits = self.prod_bits + _w(L) + 1
        super().__init__(
            {
                "en": In(1),
                "w": In(data.ArrayLayout(signed(wbits + 1), L)),
                "a": In(data.ArrayLayout(signed(A), L)),
                "dot": Out(signed(self.dot_bits)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        L = self.p.lanes
        prods = [Signal(signed(self.prod_bits), name=f"prod{j}") for j in range(L)]
        with m.If(self.en):
            for j in range(L):
                m.d.sync += prods[j].eq(self.w[j] * self.a[j])

        def tree(xs):
            while len(xs) > 1:
                nxt = [xs[i] + xs[i + 1] for i in range(0, len(xs) - 1, 2)]
                if len(xs) % 2:
                    nxt.append(xs[-1])
                xs = nxt
            return xs[0]

        m.d.sync += self.dot.eq(tree(list(prods)))
        return m


class GroupAccumulator(wiring.Component):
    """Sums beats into the group total ``T = sum (q - z)*m``. Inputs valid with ``first``/``last``
    flags; ``out_valid`` pulses (registered) after the group's last beat with ``t`` and the
    carried ``tag``."""

    def __init__(self, p: CellParams, dot_bits: int, tag_bits: int):
        self.p = p
        super().__init__(
            {
                "valid": In(1),
                "first": In(1),
                "last": In(1),
                "tag": In(tag_bits),
                "dot": In(signed(dot_bits)),
                "out_valid": Out(1),
                "out_tag": Out(tag_bits),
                "t": Out(signed(p.acc_bits)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.out_valid.eq(self.valid & self.last)
        with m.If(self.valid):
            with m.If(self.first):
                m.d.sync += self.t.eq(self.dot)
            with m.Else():
                m.d.sync += self.t.eq(self.t + self.dot)
            with m.If(self.last):
                m.d.sync += self.out_tag.eq(self.tag)
        return m


class CellCore(wiring.Component):
    """Compute of one cell with a ROM read port and an activation-buffer read port.

    ``rom_latency``: cycles from ``rom_addr`` (a register) to ``rom_data`` (1: the fused B-ROM
    is read straight into the decoder; 2: a standard macro with an output register).
    ``mac_in_reg``: register ROM data and activations at the MAC block's input (conventional).

    ``tiles``: a cell holding several matrices (its whole ``Mapping.cell_layout``): a list of
    ``(CellParams, first ROM row)`` per matrix, in ROM order; ``p`` is then the envelope
    (:func:`envelope_params`). A ``sel`` input picks the matrix a ``start`` runs: the tile's
    group count, first k-group, groups per row and ROM base come from a table, latched at start.
    """

    def __init__(
        self,
        p: CellParams,
        *,
        style: str = "fused",
        tiles: list[tuple[CellParams, int]] | None = None,
    ):
        if style not in ("fused", "conventional"):
            raise ValueError(f"style must be fused or conventional (got {style!r})")
        self.p = p
        self.tiles = tiles
        self.style = style
        self.rom_latency = 1 if style == "fused" else 2
        self.mac_in_reg = style == "conventional"
        self.latency = LATENCY_FUSED if style == "fused" else LATENCY_CONVENTIONAL
        self.kg_bits = _w(p.ng_row)
        sig = {
            "start": In(1),
            "n_tokens": In(8),
            "busy": Out(1),
        }
        if tiles is not None:
            sig["sel"] = In(_w(len(tiles)))
        super().__init__(
            sig
            | {
                "rom_addr": Out(_w(p.rom_depth)),
                "rom_en": Out(1),
                "rom_data": In(p.word_bits),
                "act_token": Out(8),
                "act_kgroup": Out(self.kg_bits),
                "act_beat": Out(_w(p.words_per_group)),
                "act_data": In(data.ArrayLayout(signed(p.act_bits), p.lanes)),
                "act_exp": In(signed(EXP_BITS)),
                "int_valid": Out(1),
                "out_t": Out(signed(p.acc_bits)),
                "out_scale": Out(SCALE_BITS),
                "out_valid": Out(1),
                "out_last": Out(1),
                "out_fp": Out(32),
            }
        )

    def elaborate(self, platform):
        m = Module()
        p = self.p
        N, wpg, mpw = p.n_groups, p.words_per_group, p.metas_per_word
        aw = _w(p.rom_depth)
        if self.tiles is None:  # one tile: constants
            n_last = Const(N - 1, _w(N + 1))
            ngr_last = Const(p.ng_row - 1, self.kg_bits)
            kg0_sel = kg0 = Const(p.kg0, self.kg_bits)
            code0_sel = code0 = Const(0, aw)
            meta0_sel = meta0 = Const(N * wpg, aw)
        else:  # per-matrix table indexed by sel, latched at start
            tb = self.tiles

            def table(vals, width, name):
                sel_v = Signal(width, name=f"{name}_sel")
                m.d.comb += sel_v.eq(Array(Const(v, width) for v in vals)[self.sel])
                reg = Signal(width, name=f"{name}_r")
                with m.If(~self.busy & self.start):
                    m.d.sync += reg.eq(sel_v)
                return sel_v, reg

            _, n_last = table([q.n_groups - 1 for q, _ in tb], _w(N + 1), "n_last")
            _, ngr_last = table([q.ng_row - 1 for q, _ in tb], self.kg_bits, "ngr")
            kg0_sel, kg0 = table([q.kg0 for q, _ in tb], self.kg_bits, "kg0")
            code0_sel, code0 = table([b for _, b in tb], aw, "code0")
            meta0_sel, meta0 = table([b + q.n_groups * wpg for q, b in tb], aw, "meta0")

        # ---------------- address generator (one read per cycle while running)
        running = Signal()
        tok = Signal(8)
        grp = Signal(_w(N + 1))
        wi = Signal(_w(wpg))
        j = Signal(_w(mpw))
        has_meta = p.has_meta
        meta_next = Signal(init=int(has_meta))
        code_addr = Signal(_w(p.rom_depth))
        meta_addr = Signal(_w(p.rom_depth))
        kg = Signal(self.kg_bits)
        ph = Signal(_w(p.period_words))
        m.d.comb += self.busy.eq(running)

        sb = data.StructLayout(
            {
                "valid": 1,
                "meta": 1,
                "first": 1,
                "last": 1,
                "final": 1,
                "phase": _w(p.period_words),
                "j": _w(mpw),
            }
        )
        issue = Signal(sb)  # sideband of the read issued this cycle (registered with the address)
        last_grp = grp == n_last
        last_tok = tok == self.n_tokens - 1

        with m.If(~running):
            m.d.sync += issue.valid.eq(0)
            with m.If(self.start):
                m.d.sync += [
                    running.eq(1),
                    tok.eq(0),
                    grp.eq(0),
                    wi.eq(0),
                    j.eq(0),
                    ph.eq(0),
                    meta_next.eq(int(has_meta)),
                    code_addr.eq(code0_sel),
                    meta_addr.eq(meta0_sel),
                    kg.eq(kg0_sel),
                ]
        with m.Else():
            m.d.sync += issue.valid.eq(1)
            with m.If(meta_next):
                m.d.sync += [
                    self.rom_addr.eq(meta_addr),
                    issue.meta.eq(1),
                    meta_addr.eq(meta_addr + 1),
                    meta_next.eq(0),
                ]
            with m.Else():
                m.d.sync += [
                    self.rom_addr.eq(code_addr),
                    self.act_token.eq(tok),
                    self.act_kgroup.eq(kg),
                    self.act_beat.eq(wi),
                    issue.meta.eq(0),
                    issue.first.eq(wi == 0),
                    issue.last.eq(wi == wpg - 1),
                    issue.final.eq((wi == wpg - 1) & last_grp & last_tok),
                    issue.phase.eq(ph),
                    issue.j.eq(j),
                    code_addr.eq(code_addr + 1),
                    wi.eq(wi + 1),
                    ph.eq(Mux(ph == p.period_words - 1, 0, ph + 1)),
                ]
                with m.If(wi == wpg - 1):
                    m.d.sync += [
                        wi.eq(0),
                        ph.eq(0),
                        grp.eq(grp + 1),
                        kg.eq(Mux(kg == ngr_last, 0, kg + 1)),
                        j.eq(j + 1),
                    ]
                    with m.If((j == mpw - 1) | last_grp):
                        m.d.sync += [j.eq(0), meta_next.eq(int(has_meta))]
                    with m.If(last_grp):
                        m.d.sync += [
                            tok.eq(tok + 1),
                            grp.eq(0),
                            code_addr.eq(code0),
                            meta_addr.eq(meta0),
                            kg.eq(kg0),
                        ]
                        with m.If(last_tok):
                            m.d.sync += running.eq(0)
        m.d.comb += self.rom_en.eq(issue.valid | running)

        # ---------------- align sideband and activations with the ROM data
        sbd = issue
        for k in range(self.rom_latency):
            nxt = Signal(sb, name=f"sb_rom{k}")
            m.d.sync += nxt.eq(sbd)
            sbd = nxt
        word = self.rom_data
        acts = self.act_data
        aexp = self.act_exp
        for k in range(self.rom_latency - 1):  # the activation buffer answers in 1 cycle
            nxt = Signal.like(self.act_data, name=f"act_dly{k}")
            nxe = Signal.like(self.act_exp, name=f"exp_dly{k}")
            m.d.sync += [nxt.eq(acts), nxe.eq(aexp)]
            acts, aexp = nxt, nxe
        if self.mac_in_reg:
            w_r = Signal(p.word_bits, name="mac_in_word")
            a_r = Signal.like(self.act_data, name="mac_in_act")
            e_r = Signal.like(self.act_exp, name="mac_in_exp")
            s_r = Signal(sb, name="mac_in_sb")
            m.d.sync += [w_r.eq(word), a_r.eq(acts), e_r.eq(aexp), s_r.eq(sbd)]
            word, acts, aexp, sbd = w_r, a_r, e_r, s_r

        # ---------------- metadata register and decoder (stage D)
        meta_reg = Signal(p.word_bits)
        prev = Signal(p.word_bits)
        code_beat = sbd.valid & ~sbd.meta
        with m.If(sbd.valid & sbd.meta):
            m.d.sync += meta_reg.eq(word)
        with m.If(code_beat):
            m.d.sync += prev.eq(word)
        fields = Array(meta_reg[i * p.meta_bits : (i + 1) * p.meta_bits] for i in range(mpw))
        field = Signal(p.meta_bits)
        m.d.comb += field.eq(fields[sbd.j])

        m.submodules.decoder = dec = CodeDecoder(p)
        m.d.comb += [dec.word.eq(word), dec.prev.eq(prev), dec.phase.eq(sbd.phase)]

        wbits = p.weight_bits if self.style == "fused" else max(8, p.weight_bits)
        m.submodules.mac = mac = MacArray(p, wbits)
        m.d.comb += mac.en.eq(1)
        if p.kind == "nf4":  # the 16-entry fixed-point codebook (shared by the lanes' muxes)
            book = Array(Const(v, signed(wbits + 1)) for v in nf4_fixed_table())
        elif p.kind == "ternary":  # digit d -> d - 1 in {-1, 0, +1}
            book = Array(Const(v, signed(2)) for v in TERNARY_TABLE)
        zf = field[SCALE_BITS:].as_unsigned() if p.zb else Const(0, 1)
        for jj in range(p.lanes):
            if p.kind == "affine":
                # zero point folded into the weight: T = sum (q - z)*m, no activation sum needed
                qz = dec.codes[jj].as_unsigned() - zf
            else:
                qz = book[dec.codes[jj]]
            m.d.comb += mac.w[jj].eq(qz)
            m.d.comb += mac.a[jj].eq(acts[jj])
        scale_v = field[:SCALE_BITS] if p.has_meta else Const(p.tensor_scale, SCALE_BITS)

        # sideband through the MAC's two register stages
        tag = data.StructLayout({"final": 1, "scale": SCALE_BITS, "exp": signed(EXP_BITS)})
        s1 = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1, "tag": tag}))
        s2 = Signal.like(s1)
        m.d.sync += [
            s1.valid.eq(code_beat),
            s1.first.eq(sbd.first),
            s1.last.eq(sbd.last),
            s1.tag.final.eq(sbd.final),
            s1.tag.scale.eq(scale_v),
            s1.tag.exp.eq(aexp),
            s2.eq(s1),
        ]

        # ---------------- group accumulator (stage A) and dequantizer (stage F)
        m.submodules.acc = acc = GroupAccumulator(p, mac.dot_bits, tag.size)
        m.d.comb += [
            acc.valid.eq(s2.valid),
            acc.first.eq(s2.first),
            acc.last.eq(s2.last),
            acc.tag.eq(s2.tag),
            acc.dot.eq(mac.dot),
        ]
        out_tag = Signal(tag)
        m.d.comb += out_tag.eq(acc.out_tag)
        # the integer partial T and the scale bits, as the accumulator presents them (debug /
        # cross-check of the int datapath; no extra registers)
        m.d.comb += [
            self.int_valid.eq(acc.out_valid),
            self.out_t.eq(acc.t),
            self.out_scale.eq(out_tag.scale),
        ]
        exp_in = out_tag.exp + p.exp_offset if p.exp_offset else out_tag.exp
        fp = dequant_expr(m, acc.t[: p.t_bits].as_signed(), out_tag.scale, exp_in)
        m.d.sync += self.out_valid.eq(acc.out_valid)
        with m.If(acc.out_valid):
            m.d.sync += [self.out_fp.eq(fp), self.out_last.eq(out_tag.final)]
        with m.Else():
            m.d.sync += self.out_last.eq(0)
        return m


def envelope_params(tiles: list[CellParams], depth: int = 0) -> CellParams:
    """Parameters covering every matrix tile of a multi-matrix cell (same format; the largest
    tile and row; ROM depth = all tiles' words, or ``depth``)."""
    q0 = tiles[0]
    for q in tiles:
        if (q.bits, q.group_size, q.word_bits, q.act_bits, q.acc_bits, q.zb) != (
            q0.bits,
            q0.group_size,
            q0.word_bits,
            q0.act_bits,
            q0.acc_bits,
            q0.zb,
        ):
            raise ValueError("the matrices of a multi-matrix cell must share one format")
    return CellParams(
        bits=q0.bits,
        group_size=q0.group_size,
        word_bits=q0.word_bits,
        act_bits=q0.act_bits,
        acc_bits=q0.acc_bits,
        n_groups=max(q.n_groups for q in tiles),
        ng_row=max(q.ng_row for q in tiles),
        kg0=0,
        depth=max(depth, sum(q.rom_rows for q in tiles)),
        zero_bits=q0.zero_bits,
    )


class FusedCell(wiring.Component):
    """CellCore fused with its B-ROM holding the tile ``words`` (read straight into the decoder).

    ``tiles`` (a list of per-matrix CellParams, in ROM order): ``words`` is the cell's whole image
    (``romsim.rom.cell_image``: each matrix's codes then metadata, back to back) and ``p`` the
    envelope (:func:`envelope_params`); the ``sel`` input picks the matrix a start runs."""

    def __init__(
        self,
        p: CellParams,
        words,
        *,
        style: str = "fused",
        tiles: list[CellParams] | None = None,
        rom_style: str = "memory",
        rom_corrupt: tuple[int, int] | None = None,
    ):
        if rom_style not in ROM_STYLES_CELL:
            raise ValueError(f"rom_style {rom_style!r}: one of {', '.join(ROM_STYLES_CELL)}")
        self.rom_style = rom_style
        self.rom_corrupt = rom_corrupt
        self.p = p
        self.words = [int(w) for w in words]
        want = p.rom_rows if tiles is None else sum(q.rom_rows for q in tiles)
        if len(self.words) != want:
            raise ValueError(f"tile has {len(self.words)} words, parameters say {want}")
        self.style = style
        self.tiles = tiles
        layout = None
        if tiles is not None:
            bases = np.cumsum([0] + [q.rom_rows for q in tiles])[:-1]
            layout = [(q, int(b)) for q, b in zip(tiles, bases, strict=True)]
        self.core = CellCore(p, style=style, tiles=layout)
        sig = {
            k: v
            for k, v in self.core.signature.members.items()
            if k not in ("rom_addr", "rom_en", "rom_data")
        }
        super().__init__(sig)

    @property
    def latency(self) -> int:
        return self.core.latency

    def elaborate(self, platform):
        m = Module()
        p = self.p
        m.submodules.core = core = self.core
        init = self.words + [0] * (p.rom_depth - len(self.words))
        if self.rom_style == "memory":  # behavioural ROM (the reference)
            m.submodules.rom = rom = memory.Memory(
                shape=unsigned(p.word_bits), depth=p.rom_depth, init=init
            )
            rd = rom.read_port()
            m.d.comb += [rd.addr.eq(core.rom_addr), rd.en.eq(core.rom_en)]
            rom_data = rd.data
        else:  # structural B-ROM / standard ROM (romsim.rtl.brom): the same synchronous read
            from .brom import make_rom

            m.submodules.rom = srom = make_rom(
                self.rom_style, self.words, p.word_bits, corrupt=self.rom_corrupt
            )
            addr_q = Signal(len(core.rom_addr), name="rom_addr_q")
            with m.If(core.rom_en):
                m.d.sync += addr_q.eq(core.rom_addr)
            m.d.comb += srom.addr.eq(addr_q)
            rom_data = Signal(p.word_bits, name="rom_rdata")
            if len(addr_q) > srom.addr_bits:  # no aliasing: past the array reads 0
                m.d.comb += rom_data.eq(Mux(addr_q[srom.addr_bits :] == 0, srom.data, 0))
            else:
                m.d.comb += rom_data.eq(srom.data)
        if self.style == "fused":
            m.d.comb += core.rom_data.eq(rom_data)
        else:  # standard ROM macro: registered output latch
            q = Signal(p.word_bits, name="rom_q")
            m.d.sync += q.eq(rom_data)
            m.d.comb += core.rom_data.eq(q)
        for name in self.signature.members:
            port, cport = getattr(self, name), getattr(core, name)
            if self.signature.members[name].flow == In:
                m.d.comb += cport.eq(port)
            else:
                m.d.comb += port.eq(cport)
        return m


def ConventionalCell(p: CellParams, words) -> FusedCell:  # noqa: N802 - a constructor
    """Standard ROM macro (registered output) + separate MAC block (input register, generic 8-bit
    weight multipliers): the same function as :class:`FusedCell`, 2 cycles more latency."""
    return FusedCell(p, words, style="conventional")


def row_pieces(params: list[CellParams]) -> tuple[int, list[list[tuple[int, int]]]]:
    """Rows of a row-block of cells holding consecutive group runs of one matrix: (number of
    rows, per block-local row the (cell, piece index) pairs that hold a part of it, in K order).
    Piece ``k`` of a cell is its ``k``-th (partial) row. Raises if the runs are not consecutive
    or a row spans more than two cells."""
    ng = params[0].ng_row
    off = params[0].kg0
    rows: dict[int, list[tuple[int, int]]] = {}
    for c, q in enumerate(params):
        if off % ng != q.kg0:
            raise ValueError(f"cell {c} does not continue cell {c - 1}'s group run")
        r_first = off // ng
        for g in range(off, off + q.n_groups):
            rows.setdefault(g // ng, [])
            if (c, g // ng - r_first) not in rows[g // ng]:
                rows[g // ng].append((c, g // ng - r_first))
        off += q.n_groups
    out = [rows[r] for r in sorted(rows)]
    if any(len(x) > 2 for x in out):
        raise ValueError("a row spans more than two cells (cells hold fewer groups than a row)")
    return len(out), out


class RowBlock(wiring.Component):
    """A matrix unit's slice around ``cells``: the shared activation buffer (``max_tokens`` x
    ``ng_row`` entries of one k-group each -- the beats' int8 mantissas and the group's exponent
    ``e`` -- written one entry per cycle), the cells of one matrix row-block started together,
    per-cell output capture (shifted into wide registers: ``out{i}`` the integer T and scale bits,
    ``fp{i}`` the fp32 partials) and the cycle counter ``cycles`` = cycles from the start cycle to
    the cycle in which the last fp32 partial of every cell is presented.

    ``row_sums=True`` (cells holding consecutive group runs of one matrix): the unit's reduction
    -- per cell an fp32 accumulator summing the groups it holds of each row in K order from +0,
    then per row split over two neighbouring cells one fp32 add of the two pieces (first cell's
    piece + second's); ``rows`` holds ``max_tokens x n_rows`` fp32 sums (token-major),
    ``rows_done`` rises when all of ``n_tokens`` are written, ``rows_cycles`` = start cycle to the
    cycle the last sum is presented. The reference is ``romsim.kernels.dequant_ref.rowblock_sums``.
    """

    def __init__(self, cells: list[FusedCell], max_tokens: int = 1, row_sums: bool = False):
        self.cells = cells
        p0 = cells[0].p
        for c in cells:
            q = c.p
            if (q.bits, q.group_size, q.word_bits, q.act_bits, q.ng_row) != (
                p0.bits,
                p0.group_size,
                p0.word_bits,
                p0.act_bits,
                p0.ng_row,
            ):
                raise ValueError("cells of one row-block must share format and K")
        self.p0 = p0
        self.max_tokens = max_tokens
        self.depth = max_tokens * p0.ng_row
        self.row_sums = row_sums
        sig = {
            "act_we": In(1),
            "act_waddr": In(_w(self.depth)),
            "act_wdata": In(p0.entry_bits),
            "start": In(1),
            "n_tokens": In(8),
            "done": Out(1),
            "cycles": Out(32),
        }
        self.n_sel = max(len(c.tiles) if c.tiles else 0 for c in cells)
        if self.n_sel:
            if row_sums:
                raise ValueError("row sums are for single-matrix cells")
            sig["sel"] = In(_w(self.n_sel))
        for i, c in enumerate(cells):
            sig[f"out{i}"] = Out(max_tokens * c.p.n_groups * c.p.out_bits)
            sig[f"fp{i}"] = Out(max_tokens * c.p.n_groups * 32)
            sig[f"count{i}"] = Out(16)
        if row_sums:
            self.n_rows, self.pieces = row_pieces([c.p for c in cells])
            sig["rows"] = Out(max_tokens * self.n_rows * 32)
            sig["rows_done"] = Out(1)
            sig["rows_cycles"] = Out(32)
        super().__init__(sig)

    def elaborate(self, platform):
        m = Module()
        p0 = self.p0
        m.submodules.abuf = abuf = memory.Memory(
            shape=unsigned(p0.entry_bits), depth=self.depth, init=[]
        )
        wp = abuf.write_port()
        m.d.comb += [wp.addr.eq(self.act_waddr), wp.data.eq(self.act_wdata), wp.en.eq(self.act_we)]
        now = Signal(32)
        t0 = Signal(32)
        m.d.sync += now.eq(now + 1)
        with m.If(self.start):
            m.d.sync += t0.eq(now)
        dones = []
        ends = []
        beat_bits = p0.lanes * p0.act_bits
        exp_lo = p0.words_per_group * beat_bits
        for i, c in enumerate(self.cells):
            m.submodules[f"cell{i}"] = c
            rp = abuf.read_port()
            m.d.comb += [
                rp.addr.eq(c.act_token * p0.ng_row + c.act_kgroup),
                c.start.eq(self.start),
                c.n_tokens.eq(self.n_tokens),
            ]
            if c.tiles:
                m.d.comb += c.sel.eq(self.sel)
            beat = Signal.like(c.act_beat, name=f"beat_q{i}")
            m.d.sync += beat.eq(c.act_beat)
            beats = Array(
                rp.data[k * beat_bits : (k + 1) * beat_bits] for k in range(p0.words_per_group)
            )
            m.d.comb += [
                c.act_data.eq(beats[beat]),
                c.act_exp.eq(rp.data[exp_lo : exp_lo + EXP_BITS]),
            ]
            out, fpo = getattr(self, f"out{i}"), getattr(self, f"fp{i}")
            cnt = getattr(self, f"count{i}")
            for reg, word, valid in (
                (out, Cat(c.out_t, c.out_scale), c.int_valid),
                (fpo, c.out_fp, c.out_valid),
            ):
                wb = len(word)
                with m.If(~self.start & valid):
                    if len(reg) > wb:
                        m.d.sync += reg.eq(Cat(reg[wb:], word))
                    else:
                        m.d.sync += reg.eq(word)
            done_i = Signal(name=f"done{i}")
            end_i = Signal(32, name=f"end{i}")
            with m.If(self.start):
                m.d.sync += [cnt.eq(0), done_i.eq(0)]
            with m.Elif(c.out_valid):
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(c.out_last):  # c.out_* is registered: presented in this cycle
                    m.d.sync += [done_i.eq(1), end_i.eq(now)]
            dones.append(done_i)
            ends.append(end_i)
        all_done = Signal()
        m.d.comb += all_done.eq(Cat(*dones).all())
        latest = ends[0]
        for e in ends[1:]:
            latest = Mux(e > latest, e, latest)
        m.d.comb += self.done.eq(all_done)
        m.d.comb += self.cycles.eq(latest - t0)
        if self.row_sums:
            self._reduction(m, now, t0)
        return m

    def _reduction(self, m: Module, now, t0) -> None:
        T = self.max_tokens
        ng = self.p0.ng_row
        # ---- per cell: accumulate the groups of each row it holds (K order, from +0)
        piece = []
        for i, c in enumerate(self.cells):
            n, kg0 = c.p.n_groups, c.p.kg0
            gi = Signal(range(n + 1), name=f"red{i}_gi")
            kg = Signal(range(ng + 1), name=f"red{i}_kg", init=kg0)
            pi = Signal(range(n + 1), name=f"red{i}_pi")
            tk = Signal(8, name=f"red{i}_tok")
            acc = Signal(32, name=f"red{i}_acc")
            pv = Signal(name=f"red{i}_pv")
            pval = Signal(32, name=f"red{i}_pval")
            pidx = Signal(range(n + 1), name=f"red{i}_pidx")
            ptok = Signal(8, name=f"red{i}_ptok")
            first = (gi == 0) | (kg == 0)
            last = (gi == n - 1) | (kg == ng - 1)
            ssum = fp32_add_expr(m, Mux(first, 0, acc), c.out_fp, name=f"red{i}_add")
            m.d.sync += pv.eq(0)
            with m.If(self.start):
                m.d.sync += [gi.eq(0), kg.eq(kg0), pi.eq(0), tk.eq(0)]
            with m.Elif(c.out_valid):
                m.d.sync += [acc.eq(ssum), gi.eq(gi + 1), kg.eq(Mux(kg == ng - 1, 0, kg + 1))]
                with m.If(last):
                    m.d.sync += [
                        pv.eq(1),
                        pval.eq(ssum),
                        pidx.eq(pi),
                        ptok.eq(tk),
                        pi.eq(pi + 1),
                    ]
                with m.If(gi == n - 1):
                    m.d.sync += [gi.eq(0), kg.eq(kg0), pi.eq(0), tk.eq(tk + 1)]
            piece.append((pv, pval, pidx, ptok))
        # ---- per row and token slot: the final sum
        rows_end = Signal(32)
        written = []
        for t in range(T):
            for r, parts in enumerate(self.pieces):
                res = self.rows[(t * self.n_rows + r) * 32 : (t * self.n_rows + r + 1) * 32]
                wr = Signal(name=f"row_w{t}_{r}")
                written.append((t, wr))
                regs = []
                for j, (c, k) in enumerate(parts):
                    pv, pval, pidx, ptok = piece[c]
                    h = Signal(32, name=f"row_h{t}_{r}_{j}")
                    v = Signal(name=f"row_v{t}_{r}_{j}")
                    with m.If(self.start):
                        m.d.sync += v.eq(0)
                    with m.Elif(pv & (pidx == k) & (ptok == t)):
                        m.d.sync += [h.eq(pval), v.eq(1)]
                    regs.append((h, v))
                if len(regs) == 1:
                    ((val, ok),) = regs
                else:  # split row: first cell's piece + second cell's piece
                    (ha, va), (hb, vb) = regs
                    val, ok = fp32_add_expr(m, ha, hb, name=f"row_add{t}_{r}"), va & vb
                with m.If(self.start):
                    m.d.sync += wr.eq(0)
                with m.Elif(ok & ~wr):
                    m.d.sync += [res.eq(val), wr.eq(1), rows_end.eq(now + 1)]
        need = Cat(*[wr | (self.n_tokens <= t) for t, wr in written])
        m.d.comb += [self.rows_done.eq(need.all()), self.rows_cycles.eq(rows_end - t0)]
