"""Floating-point datapath of the cell and the unit, as Amaranth expressions (IEEE-754 binary32,
round to nearest even, subnormals supported; no flush to zero).

* :func:`dequant_expr` -- the cell's dequantizer: ``fp32(T) * fp32(s16) * 2**e`` exactly as the
  kernels' integer path computes a group's partial (``romsim.kernels.qmatmul.combine_int``:
  ``p = fp32(D - z*S) * s`` rounded once, then ``p * 2**e`` rounded again -- the second rounding
  only matters when the result is subnormal). ``T`` is an integer with ``|T| < 2**24`` (so
  ``fp32(T)`` is exact), ``s16`` the fp16 scale bits (finite: exponent field != 31), ``e`` a signed
  exponent <= 127 (the block-floating-point quantizer gives e <= 121). ``e < -149`` gives a signed
  zero (``2**e`` is 0 in fp32), overflow gives +-inf, like numpy.
* :func:`fp32_add_expr` -- ``a + b`` in binary32 (the unit's accumulator / adder tree): RNE,
  subnormals, ``x + (-x) = +0``, ``-0 + -0 = -0``, inf + finite = inf, ``inf + -inf`` = the x86
  default NaN ``0xffc00000``, a NaN operand is returned quieted (a's first).

Both are combinational; the callers register the results (one pipeline stage each).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .params import EXP_BITS


def _lzc(m: Module, x: Signal, width: int, name: str) -> Signal:
    """Leading zeros of ``x`` (``width`` bits) as a priority chain (``width`` if x == 0)."""
    out = Signal(range(width + 1), name=name)
    expr = Const(width, out.shape())
    for i in range(width):  # the highest set bit wins: build from the LSB up
        expr = Mux(x[i], width - 1 - i, expr)
    m.d.comb += out.eq(expr)
    return out


def _shr_sticky(m: Module, x, width: int, sh, max_sh: int, name: str):
    """``x >> sh`` (``sh`` clamped to ``max_sh``) and the OR of the bits shifted out."""
    shc = Signal(range(max_sh + 1), name=f"{name}_sh")
    m.d.comb += shc.eq(Mux(sh > max_sh, max_sh, sh))
    wide = Signal(width + max_sh, name=f"{name}_wide")
    m.d.comb += wide.eq(Cat(Const(0, max_sh), x) >> shc)
    res = Signal(width, name=f"{name}_res")
    sticky = Signal(name=f"{name}_sticky")
    m.d.comb += [res.eq(wide[max_sh:]), sticky.eq(wide[:max_sh].any())]
    return res, sticky


def dequant_expr(m: Module, t, s16, e, name: str = "dq") -> Signal:
    """binary32 bits of ``fp32(t) * fp32(s16) * 2**e`` (see the module docstring)."""
    sign = Signal(name=f"{name}_sign")
    mag = Signal(24, name=f"{name}_mag")
    m.d.comb += [
        sign.eq(t[-1] ^ s16[15]),
        mag.eq(Mux(t[-1], -t, t)[:24]),
    ]
    es, fs = s16[10:15], s16[:10]
    ms = Signal(11, name=f"{name}_ms")
    m.d.comb += ms.eq(Cat(fs, es != 0))
    prod = Signal(35, name=f"{name}_prod")
    m.d.comb += prod.eq(mag * ms)  # exact
    lz = _lzc(m, prod, 35, f"{name}_lz")
    norm = Signal(35, name=f"{name}_norm")
    m.d.comb += norm.eq(prod << lz)
    # first rounding: fp32(T) * s to 24 significant bits
    man = norm[11:35]
    guard, sticky = norm[10], norm[:10].any()
    inc = guard & (sticky | man[0])
    r1 = Signal(25, name=f"{name}_r1")
    m.d.comb += r1.eq(man + inc)
    m1 = Signal(24, name=f"{name}_m1")
    carry = r1[24]
    m.d.comb += m1.eq(Mux(carry, 1 << 23, r1[:24]))
    # value = m1 * 2**(34 - lz - 23 + carry + E_s), E_s = max(es, 1) - 25; biased exponent of
    # the product then: 34 - lz + carry + max(es,1) - 25 + 127, plus e for the 2**e multiply
    emax = Signal(range(32), name=f"{name}_es1")
    m.d.comb += emax.eq(Mux(es == 0, 1, es))
    be = Signal(signed(12), name=f"{name}_be")
    m.d.comb += be.eq(136 - lz + carry + emax + e)
    # second rounding, only when the product times 2**e is subnormal
    sh = Signal(signed(12), name=f"{name}_shs")
    m.d.comb += sh.eq(1 - be)
    shu = Signal(5, name=f"{name}_shu")
    m.d.comb += shu.eq(Mux(sh > 27, 27, sh[:5]))
    res, st2 = _shr_sticky(m, Cat(Const(0, 2), m1), 26, shu, 27, f"{name}_sub")
    q, g2, below = res[2:26], res[1], res[0] | st2
    subr = Signal(24, name=f"{name}_subr")
    m.d.comb += subr.eq(q + (g2 & (below | q[0])))
    out = Signal(32, name=f"{name}_out")
    with m.If(prod == 0):
        m.d.comb += out.eq(Cat(Const(0, 31), sign))
    with m.Elif(e < -149):
        m.d.comb += out.eq(Cat(Const(0, 31), sign))
    with m.Elif(be >= 255):
        m.d.comb += out.eq(Cat(Const(0, 23), Const(255, 8), sign))
    with m.Elif(be >= 1):
        m.d.comb += out.eq(Cat(m1[:23], be[:8], sign))
    with m.Else():
        m.d.comb += out.eq(Cat(subr[:23], subr[23], Const(0, 7), sign))
    return out


def fp32_add_expr(m: Module, a, b, name: str = "fa") -> Signal:
    """binary32 bits of ``a + b`` (see the module docstring)."""
    a_abs, b_abs = a[:31], b[:31]
    swap = Signal(name=f"{name}_swap")
    m.d.comb += swap.eq(b_abs > a_abs)
    x = Signal(32, name=f"{name}_x")  # larger magnitude
    y = Signal(32, name=f"{name}_y")
    m.d.comb += [x.eq(Mux(swap, b, a)), y.eq(Mux(swap, a, b))]
    ex, ey = x[23:31], y[23:31]
    mx = Signal(24, name=f"{name}_mx")
    my = Signal(24, name=f"{name}_my")
    m.d.comb += [mx.eq(Cat(x[:23], ex != 0)), my.eq(Cat(y[:23], ey != 0))]
    ex1 = Signal(8, name=f"{name}_ex1")
    ey1 = Signal(8, name=f"{name}_ey1")
    m.d.comb += [ex1.eq(Mux(ex == 0, 1, ex)), ey1.eq(Mux(ey == 0, 1, ey))]
    d = Signal(8, name=f"{name}_d")
    m.d.comb += d.eq(ex1 - ey1)
    # 24-bit significands with 3 extra bits (guard, round, sticky)
    ya, yst = _shr_sticky(m, Cat(Const(0, 3), my), 27, d, 27, f"{name}_al")
    ya3 = Signal(27, name=f"{name}_ya")
    m.d.comb += ya3.eq(ya | yst)
    sub = x[31] ^ y[31]
    s = Signal(28, name=f"{name}_s")
    xm = Cat(Const(0, 3), mx)
    m.d.comb += s.eq(Mux(sub, xm - ya3, xm + ya3))
    # normalise: carry -> shift right 1 (keep sticky); else shift left by min(lz, ex1 - 1)
    lz = _lzc(m, s[:27], 27, f"{name}_lz")
    lsh = Signal(8, name=f"{name}_lsh")
    m.d.comb += lsh.eq(Mux(lz > ex1 - 1, ex1 - 1, lz))
    n = Signal(27, name=f"{name}_n")
    en = Signal(9, name=f"{name}_en")  # exponent of bit 26 of n (biased), before rounding
    with m.If(s[27]):
        m.d.comb += [n.eq(Cat(s[1] | s[0], s[2:28])), en.eq(ex1 + 1)]
    with m.Else():
        m.d.comb += [n.eq(s[:27] << lsh), en.eq(ex1 - lsh)]
    man = n[3:27]
    inc = n[2] & (n[1] | n[0] | man[0])
    r = Signal(25, name=f"{name}_r")
    m.d.comb += r.eq(man + inc)
    mr = Signal(24, name=f"{name}_mr")
    er = Signal(10, name=f"{name}_er")
    with m.If(r[24]):
        m.d.comb += [mr.eq(r[1:25]), er.eq(en + 1)]
    with m.Else():
        m.d.comb += [mr.eq(r[:24]), er.eq(en)]
    out = Signal(32, name=f"{name}_out")
    a_nan = (a[23:31] == 255) & a[:23].any()
    b_nan = (b[23:31] == 255) & b[:23].any()
    a_inf = (a[23:31] == 255) & ~a[:23].any()
    b_inf = (b[23:31] == 255) & ~b[:23].any()
    with m.If(a_nan):
        m.d.comb += out.eq(a | (1 << 22))
    with m.Elif(b_nan):
        m.d.comb += out.eq(b | (1 << 22))
    with m.Elif(a_inf & b_inf & (a[31] != b[31])):
        m.d.comb += out.eq(0xFFC00000)
    with m.Elif(a_inf):
        m.d.comb += out.eq(a)
    with m.Elif(b_inf):
        m.d.comb += out.eq(b)
    with m.Elif(s == 0):
        m.d.comb += out.eq(Cat(Const(0, 31), a[31] & b[31]))
    with m.Elif(er >= 255):
        m.d.comb += out.eq(Cat(Const(0, 23), Const(255, 8), x[31]))
    with m.Else():
        # a subnormal result keeps bit 23 of mr clear: exponent field 0 (en = 1 then)
        m.d.comb += out.eq(Cat(mr[:23], Mux(mr[23], er[:8], 0), x[31]))
    return out


class Dequant(wiring.Component):
    """Combinational wrapper of :func:`dequant_expr` (unit tests)."""

    def __init__(self, t_bits: int = 25):
        super().__init__(
            {"t": In(signed(t_bits)), "s16": In(16), "e": In(signed(EXP_BITS)), "out": Out(32)}
        )

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.out.eq(dequant_expr(m, self.t, self.s16, self.e))
        return m


class Fp32Add(wiring.Component):
    """Combinational wrapper of :func:`fp32_add_expr` (unit tests)."""

    def __init__(self):
        super().__init__({"a": In(32), "b": In(32), "out": Out(unsigned(32))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.out.eq(fp32_add_expr(m, self.a, self.b))
        return m
