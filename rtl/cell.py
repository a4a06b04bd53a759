"""Amaranth generator of the fused cell (B-ROM + compute) and its conventional counterpart.

Blocks (each an ``amaranth.lib.wiring.Component``):

* :class:`CodeDecoder`   -- one ROM word (+ the previous word, for 3-bit codes) -> ``lanes`` codes.
* :class:`MacArray`      -- ``lanes`` code x activation products, registered, then an adder tree
  (registered) giving the beat's dot product and activation sum.
* :class:`GroupAccumulator` -- sums beats into the group's ``D = sum q*m`` and ``S = sum m``.
* :class:`CellCore`      -- address generator + the above + zero correction ``T = D - z*S``; talks
  to a ROM read port and to the unit's activation buffer; emits one partial-sum word per group:
  ``T`` (``acc_bits``, signed) and the group's fp16 scale bits. The fp32 scale multiply and the
  sum over a row's groups happen downstream (the unit's reduction; ``romsim.kernels.qmatmul.
  combine_int`` defines them), see docs/rtl.md.
* :class:`FusedCell`     -- CellCore + its tile as a ROM (``amaranth.lib.memory`` with init).
* :class:`ConventionalCell` -- the same function as a standard ROM macro (registered output) plus
  a separate MAC block with an input register and generic 8-bit-weight multipliers.
* :class:`RowBlock`      -- the unit around one or more cells: the activation buffer (written one
  k-group per cycle), the cells of one matrix row-block, output capture and a cycle counter.

Timing of a cell, ``R`` = tile words (codes + metadata): a token takes ``R`` cycles (one ROM read
per cycle, metadata words included) and the last partial sum appears ``R + 6`` cycles after the
start cycle (address latch, ROM access, decode+multiply, adder tree, group accumulate, zero
correction) -- ``rom_rows + pipeline_depth_cycles``, exactly what ``romsim.perf`` charges. The
conventional cell adds 2 cycles (ROM output register, MAC input register).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .params import LATENCY_CYCLES, SCALE_BITS, CellParams

LATENCY_FUSED = LATENCY_CYCLES["fused"]
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
    """``lanes`` multipliers (``wbits``-wide unsigned weight x ``act_bits`` signed activation),
    products registered, then an adder tree registered: ``dot``/``asum`` valid two cycles after
    the inputs. ``wbits`` = the code width in the fused cell, 8 in the conventional MAC block."""

    def __init__(self, p: CellParams, wbits: int):
        self.p = p
        self.wbits = wbits
        L, A = p.lanes, p.act_bits
        self.prod_bits = wbits + A + 1
        self.dot_bits = self.prod_bits + _w(L) + 1
        self.asum_bits = A + _w(L) + 1
        super().__init__(
            {
                "en": In(1),
                "w": In(data.ArrayLayout(wbits, L)),
                "a": In(data.ArrayLayout(signed(A), L)),
                "dot": Out(signed(self.dot_bits)),
                "asum": Out(signed(self.asum_bits)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        L = self.p.lanes
        prods = [Signal(signed(self.prod_bits), name=f"prod{j}") for j in range(L)]
        acts = [Signal(signed(self.p.act_bits), name=f"act{j}") for j in range(L)]
        with m.If(self.en):
            for j in range(L):
                wv = self.w[j].as_unsigned()
                m.d.sync += prods[j].eq(Cat(wv, Const(0, 1)).as_signed() * self.a[j])
                m.d.sync += acts[j].eq(self.a[j])

        def tree(xs):
            while len(xs) > 1:
                nxt = [xs[i] + xs[i + 1] for i in range(0, len(xs) - 1, 2)]
                if len(xs) % 2:
                    nxt.append(xs[-1])
                xs = nxt
            return xs[0]

        m.d.sync += self.dot.eq(tree(list(prods)))
        m.d.sync += self.asum.eq(tree(list(acts)))
        return m


class GroupAccumulator(wiring.Component):
    """Sums beats into group totals. Inputs valid with ``first``/``last`` flags; ``out_valid``
    pulses (registered) after the group's last beat with ``d``/``s`` and the carried ``tag``."""

    def __init__(self, p: CellParams, dot_bits: int, asum_bits: int, tag_bits: int):
        self.p = p
        super().__init__(
            {
                "valid": In(1),
                "first": In(1),
                "last": In(1),
                "tag": In(tag_bits),
                "dot": In(signed(dot_bits)),
                "asum": In(signed(asum_bits)),
                "out_valid": Out(1),
                "out_tag": Out(tag_bits),
                "d": Out(signed(p.acc_bits)),
                "s": Out(signed(p.s_bits + 1)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.out_valid.eq(self.valid & self.last)
        with m.If(self.valid):
            with m.If(self.first):
                m.d.sync += [self.d.eq(self.dot), self.s.eq(self.asum)]
            with m.Else():
                m.d.sync += [self.d.eq(self.d + self.dot), self.s.eq(self.s + self.asum)]
            with m.If(self.last):
                m.d.sync += self.out_tag.eq(self.tag)
        return m


class CellCore(wiring.Component):
    """Compute of one cell with a ROM read port and an activation-buffer read port.

    ``rom_latency``: cycles from ``rom_addr`` (a register) to ``rom_data`` (1: the fused B-ROM
    is read straight into the decoder; 2: a standard macro with an output register).
    ``mac_in_reg``: register ROM data and activations at the MAC block's input (conventional).
    """

    def __init__(self, p: CellParams, *, style: str = "fused"):
        if style not in ("fused", "conventional"):
            raise ValueError(f"style must be fused or conventional (got {style!r})")
        self.p = p
        self.style = style
        self.rom_latency = 1 if style == "fused" else 2
        self.mac_in_reg = style == "conventional"
        self.latency = LATENCY_FUSED if style == "fused" else LATENCY_CONVENTIONAL
        self.kg_bits = _w(p.ng_row)
        super().__init__(
            {
                "start": In(1),
                "n_tokens": In(8),
                "busy": Out(1),
                "rom_addr": Out(_w(p.rom_depth)),
                "rom_en": Out(1),
                "rom_data": In(p.word_bits),
                "act_token": Out(8),
                "act_kgroup": Out(self.kg_bits),
                "act_beat": Out(_w(p.words_per_group)),
                "act_data": In(data.ArrayLayout(signed(p.act_bits), p.lanes)),
                "out_valid": Out(1),
                "out_last": Out(1),
                "out_t": Out(signed(p.acc_bits)),
                "out_scale": Out(SCALE_BITS),
            }
        )

    def elaborate(self, platform):
        m = Module()
        p = self.p
        N, wpg, mpw = p.n_groups, p.words_per_group, p.metas_per_word
        code_words = N * wpg

        # ---------------- address generator (one read per cycle while running)
        running = Signal()
        tok = Signal(8)
        grp = Signal(_w(N + 1))
        wi = Signal(_w(wpg))
        j = Signal(_w(mpw))
        meta_next = Signal(init=1)
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
        last_grp = grp == N - 1
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
                    meta_next.eq(1),
                    code_addr.eq(0),
                    meta_addr.eq(code_words),
                    kg.eq(p.kg0),
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
                        kg.eq(Mux(kg == p.ng_row - 1, 0, kg + 1)),
                        j.eq(j + 1),
                    ]
                    with m.If((j == mpw - 1) | last_grp):
                        m.d.sync += [j.eq(0), meta_next.eq(1)]
                    with m.If(last_grp):
                        m.d.sync += [
                            tok.eq(tok + 1),
                            grp.eq(0),
                            code_addr.eq(0),
                            meta_addr.eq(code_words),
                            kg.eq(p.kg0),
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
        for k in range(self.rom_latency - 1):  # the activation buffer answers in 1 cycle
            nxt = Signal.like(self.act_data, name=f"act_dly{k}")
            m.d.sync += nxt.eq(acts)
            acts = nxt
        if self.mac_in_reg:
            w_r = Signal(p.word_bits, name="mac_in_word")
            a_r = Signal.like(self.act_data, name="mac_in_act")
            s_r = Signal(sb, name="mac_in_sb")
            m.d.sync += [w_r.eq(word), a_r.eq(acts), s_r.eq(sbd)]
            word, acts, sbd = w_r, a_r, s_r

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

        wbits = p.bits if self.style == "fused" else 8
        m.submodules.mac = mac = MacArray(p, wbits)
        m.d.comb += mac.en.eq(1)
        for jj in range(p.lanes):
            m.d.comb += [mac.w[jj].eq(dec.codes[jj]), mac.a[jj].eq(acts[jj])]

        # sideband through the MAC's two register stages
        tag = data.StructLayout({"final": 1, "field": p.meta_bits})
        s1 = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1, "tag": tag}))
        s2 = Signal.like(s1)
        m.d.sync += [
            s1.valid.eq(code_beat),
            s1.first.eq(sbd.first),
            s1.last.eq(sbd.last),
            s1.tag.final.eq(sbd.final),
            s1.tag.field.eq(field),
            s2.eq(s1),
        ]

        # ---------------- group accumulator (stage A) and zero correction (stage Z)
        m.submodules.acc = acc = GroupAccumulator(p, mac.dot_bits, mac.asum_bits, tag.size)
        m.d.comb += [
            acc.valid.eq(s2.valid),
            acc.first.eq(s2.first),
            acc.last.eq(s2.last),
            acc.tag.eq(s2.tag),
            acc.dot.eq(mac.dot),
            acc.asum.eq(mac.asum),
        ]
        out_tag = Signal(tag)
        m.d.comb += out_tag.eq(acc.out_tag)
        z = out_tag.field[SCALE_BITS:]
        m.d.sync += self.out_valid.eq(acc.out_valid)
        with m.If(acc.out_valid):
            m.d.sync += [
                self.out_t.eq(acc.d - z.as_unsigned() * acc.s),
                self.out_scale.eq(out_tag.field[:SCALE_BITS]),
                self.out_last.eq(out_tag.final),
            ]
        with m.Else():
            m.d.sync += self.out_last.eq(0)
        return m


class FusedCell(wiring.Component):
    """CellCore fused with its B-ROM holding the tile ``words`` (read straight into the decoder)."""

    def __init__(self, p: CellParams, words, *, style: str = "fused"):
        self.p = p
        self.words = [int(w) for w in words]
        if len(self.words) != p.rom_rows:
            raise ValueError(f"tile has {len(self.words)} words, parameters say {p.rom_rows}")
        self.style = style
        self.core = CellCore(p, style=style)
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
        m.submodules.rom = rom = memory.Memory(
            shape=unsigned(p.word_bits), depth=p.rom_depth, init=init
        )
        rd = rom.read_port()
        m.d.comb += [rd.addr.eq(core.rom_addr), rd.en.eq(core.rom_en)]
        if self.style == "fused":
            m.d.comb += core.rom_data.eq(rd.data)
        else:  # standard ROM macro: registered output latch
            q = Signal(p.word_bits, name="rom_q")
            m.d.sync += q.eq(rd.data)
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


class RowBlock(wiring.Component):
    """A matrix unit's slice around ``cells``: the shared activation buffer (``max_tokens`` x
    ``ng_row`` entries of one k-group each, written one entry per cycle), the cells of one
    matrix row-block started together, per-cell output capture (shifted into one wide register)
    and the cycle counter ``cycles`` = cycles from the start cycle to the cycle in which the last
    partial sum of every cell is presented."""

    def __init__(self, cells: list[FusedCell], max_tokens: int = 1):
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
        sig = {
            "act_we": In(1),
            "act_waddr": In(_w(self.depth)),
            "act_wdata": In(p0.entry_bits),
            "start": In(1),
            "n_tokens": In(8),
            "done": Out(1),
            "cycles": Out(32),
        }
        for i, c in enumerate(cells):
            sig[f"out{i}"] = Out(max_tokens * c.p.n_groups * c.p.out_bits)
            sig[f"count{i}"] = Out(16)
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
        for i, c in enumerate(self.cells):
            m.submodules[f"cell{i}"] = c
            rp = abuf.read_port()
            m.d.comb += [
                rp.addr.eq(c.act_token * p0.ng_row + c.act_kgroup),
                c.start.eq(self.start),
                c.n_tokens.eq(self.n_tokens),
            ]
            beat = Signal.like(c.act_beat, name=f"beat_q{i}")
            m.d.sync += beat.eq(c.act_beat)
            beats = Array(
                rp.data[k * beat_bits : (k + 1) * beat_bits] for k in range(p0.words_per_group)
            )
            m.d.comb += c.act_data.eq(beats[beat])
            out, cnt = getattr(self, f"out{i}"), getattr(self, f"count{i}")
            ob = c.p.out_bits
            total = out.shape().width
            done_i = Signal(name=f"done{i}")
            end_i = Signal(32, name=f"end{i}")
            with m.If(self.start):
                m.d.sync += [cnt.eq(0), done_i.eq(0)]
            with m.Elif(c.out_valid):
                word = Cat(c.out_t, c.out_scale)
                if total > ob:
                    m.d.sync += out.eq(Cat(out[ob:], word))
                else:
                    m.d.sync += out.eq(word)
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
        return m
