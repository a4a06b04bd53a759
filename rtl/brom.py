"""Structural ROM arrays for a ROM image: the B-ROM (ROMA's 4-row grouped ROM) and a standard
NOR-array ROM, as Amaranth components Yosys can count (no ``$mem``) -- docs/rtl.md "B-ROM".

Both are combinational read arrays: ``addr`` in, ``data`` (one ``width``-bit word) out.

:class:`BRom` (rows padded to a multiple of 4; ``G = rows/4`` groups):

* :class:`CandidateGenerator` (ONE instance for the whole ROM): the two low address bits drive
  16 shared candidate lines, ``cand[p] = bit (addr & 3) of the 4-bit pattern p`` -- every value a
  column's four stored bits can take, as a 4:1 selection of p's bits.
* the metal selection: for each (group g, column c) the four stored bits
  ``b = word[4g+i] >> c & 1`` (``i = 0..3``, bit ``i`` of the pattern) name a candidate
  ``p = sum b_i << i`` and the group's column output IS the wire ``cand[p]`` -- no device.
* :class:`GroupSelect`: the high address bits pick the group -- per column a binary tree of 2:1
  muxes over the ``G`` groups' wires (``G - 1`` muxes per column; a missing leaf is 0).

:class:`StdRom` (one device per stored 1-bit):

* :class:`RowDecoder`: ``addr`` -> one-hot word lines ``wl[r]``.
* :class:`NorArray`: per column an OR over the word lines of the rows whose stored bit is 1
  (each 1-bit is one AND term "word line x stored bit": a NOR-ROM transistor).

The blocks are separate Verilog modules, so ``synth -top`` without ``-flatten`` keeps the
structure (the selection module cannot see that its inputs are candidate lines of constants);
``flatten`` lets Yosys/ABC re-minimise the whole image as logic ("logic ROM").

``corrupt=(row, col)`` flips one stored bit in the generated structure only (the ROM image the
testbench compares with is unchanged) -- for the negative tests.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

ROM_STYLES = ("brom", "rom")
N_CANDIDATES = 16  # 4-bit column patterns of a 4-row group


def _abits(rows: int) -> int:
    return max(1, ceil_log2(max(rows, 2)))


def _words(words: Sequence[int] | np.ndarray, width: int) -> list[int]:
    mask = (1 << width) - 1
    out = [int(w) for w in words]
    if not out:
        raise ValueError("empty ROM image")
    if any(w < 0 or w > mask for w in out):
        raise ValueError(f"ROM word does not fit {width} bits")
    return out


def _flip(words: list[int], corrupt: tuple[int, int] | None, width: int) -> list[int]:
    if corrupt is None:
        return words
    r, c = corrupt
    if not (0 <= r < len(words) and 0 <= c < width):
        raise ValueError(f"corrupt bit {corrupt} outside the {len(words)} x {width} image")
    out = list(words)
    out[r] ^= 1 << c
    return out


def column_patterns(words: Sequence[int] | np.ndarray, width: int) -> np.ndarray:
    """[G, width] 4-bit pattern per (group, column): bit i = stored bit of row 4g+i (rows padded
    with zero words to a multiple of 4)."""
    w = _words(words, width)
    w += [0] * (-len(w) % 4)
    bits = np.array([[(x >> c) & 1 for c in range(width)] for x in w], np.uint8)
    g = bits.reshape(-1, 4, width)
    return (g[:, 0] | g[:, 1] << 1 | g[:, 2] << 2 | g[:, 3] << 3).astype(np.uint8)


class CandidateGenerator(wiring.Component):
    """``lo`` (the two low address bits) -> the 16 candidate lines: ``cand[p] = (p >> lo) & 1``."""

    def __init__(self) -> None:
        super().__init__({"lo": In(2), "cand": Out(N_CANDIDATES)})

    def elaborate(self, platform):
        m = Module()
        for p in range(N_CANDIDATES):
            m.d.comb += self.cand[p].eq(Const(p, 4).bit_select(self.lo, 1))
        return m


class GroupSelect(wiring.Component):
    """The metal selection (group g, column c) -> ``cand[patterns[g, c]]`` and, per column, a
    2:1-mux tree over the groups driven by ``hi`` (the address bits above the low two)."""

    def __init__(self, patterns: np.ndarray) -> None:
        self.patterns = np.asarray(patterns, np.uint8)
        self.n_groups, self.width = self.patterns.shape
        self.hi_bits = _abits(self.n_groups)
        super().__init__(
            {"cand": In(N_CANDIDATES), "hi": In(self.hi_bits), "data": Out(self.width)}
        )

    def elaborate(self, platform):
        m = Module()
        for c in range(self.width):
            # leaves: one wire per group (the candidate its 4 stored bits name)
            level: list = [self.cand[int(p)] for p in self.patterns[:, c]]
            for b in range(self.hi_bits):
                if len(level) % 2:
                    level.append(Const(0, 1))
                level = [Mux(self.hi[b], level[i + 1], level[i]) for i in range(0, len(level), 2)]
            m.d.comb += self.data[c].eq(level[0])
        return m


class BRom(wiring.Component):
    """Structural B-ROM of ``words`` (``width``-bit): candidates once, metal selection, group
    select. Combinational read: ``data = words[addr]`` (0 past the image)."""

    def __init__(
        self,
        words: Sequence[int] | np.ndarray,
        width: int,
        *,
        corrupt: tuple[int, int] | None = None,
    ) -> None:
        self.width = width
        self.image = _words(words, width)
        self.rows = len(self.image) + (-len(self.image) % 4)
        self.n_groups = self.rows // 4
        self.patterns = column_patterns(_flip(self.image, corrupt, width), width)
        self.addr_bits = 2 + _abits(self.n_groups) if self.n_groups > 1 else 2
        super().__init__({"addr": In(self.addr_bits), "data": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.cand = cand = CandidateGenerator()
        m.submodules.select = sel = GroupSelect(self.patterns)
        m.d.comb += [
            cand.lo.eq(self.addr[:2]),
            sel.cand.eq(cand.cand),
            sel.hi.eq(self.addr[2:] if self.addr_bits > 2 else 0),
            self.data.eq(sel.data),
        ]
        return m


class RowDecoder(wiring.Component):
    """``addr`` -> one-hot word lines (``rows`` of them)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        super().__init__({"addr": In(_abits(rows)), "wl": Out(rows)})

    def elaborate(self, platform):
        m = Module()
        for r in range(self.rows):
            m.d.comb += self.wl[r].eq(self.addr == r)
        return m


class NorArray(wiring.Component):
    """Per column the OR of the word lines of rows whose stored bit is 1 (one term per 1-bit)."""

    def __init__(self, words: list[int], width: int) -> None:
        self.image = words
        self.width = width
        super().__init__({"wl": In(len(words)), "data": Out(width)})

    def elaborate(self, platform):
        m = Module()
        for c in range(self.width):
            terms = [self.wl[r] for r, w in enumerate(self.image) if (w >> c) & 1]
            if not terms:
                m.d.comb += self.data[c].eq(0)
            else:
                m.d.comb += self.data[c].eq(Cat(*terms).any())
        return m


class StdRom(wiring.Component):
    """Standard (NOR-array) ROM of ``words``: row decoder + one OR term per stored 1-bit."""

    def __init__(
        self,
        words: Sequence[int] | np.ndarray,
        width: int,
        *,
        corrupt: tuple[int, int] | None = None,
    ) -> None:
        self.width = width
        self.image = _words(words, width)
        self.rows = len(self.image)
        self.stored = _flip(self.image, corrupt, width)
        self.addr_bits = _abits(self.rows)
        super().__init__({"addr": In(self.addr_bits), "data": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dec = dec = RowDecoder(self.rows)
        m.submodules.array = arr = NorArray(self.stored, self.width)
        m.d.comb += [dec.addr.eq(self.addr), arr.wl.eq(dec.wl), self.data.eq(arr.data)]
        return m


def make_rom(
    style: str,
    words: Sequence[int] | np.ndarray,
    width: int,
    *,
    corrupt: tuple[int, int] | None = None,
) -> BRom | StdRom:
    if style == "brom":
        return BRom(words, width, corrupt=corrupt)
    if style == "rom":
        return StdRom(words, width, corrupt=corrupt)
    raise ValueError(f"rom style {style!r}: must be one of {', '.join(ROM_STYLES)}")


def rom_verilog(rom: BRom | StdRom, name: str) -> str:
    from amaranth.back import verilog

    return verilog.convert(rom, name=name, emit_src=False)


# ---- statistics and the device-level model ----------------------------------------------------


def image_stats(words: Sequence[int] | np.ndarray, width: int) -> dict:
    """Bit statistics of an image: fraction of 1-bits, the distribution of the 16 column
    patterns of 4-row groups, and the device counts of the array models (docs/rtl.md):
    standard ROM = one device per stored bit (via-programmed) or per 1-bit (NOR, diffusion);
    B-ROM = one select device per (group, column), or per non-0000 (group, column) when the
    all-zero pattern is left unconnected; + 16 candidates x 4 pass devices; SRAM = 6 per bit."""
    w = _words(words, width)
    bits = len(w) * width
    ones = sum(int(x).bit_count() for x in w)
    pats = column_patterns(w, width)
    hist = np.bincount(pats.ravel(), minlength=N_CANDIDATES)
    pr = hist / hist.sum()
    entropy = float(-(pr[pr > 0] * np.log2(pr[pr > 0])).sum())
    gc = int(pats.size)
    return {
        "rows": len(w),
        "width": width,
        "bits": bits,
        "ones": ones,
        "one_fraction": ones / bits,
        "pattern_hist": [int(h) for h in hist],
        "pattern_entropy_bits": entropy,
        "distinct_patterns": int((hist > 0).sum()),
        "devices": {
            "sram_6t": 6 * bits,
            "rom_per_bit": bits,
            "rom_per_one": ones,
            "brom_per_group_col": gc + 4 * N_CANDIDATES,
            "brom_nonzero": int((pats != 0).sum()) + 4 * N_CANDIDATES,
        },
    }


# ---- Verilog + cocotb ---------------------------------------------------------------------------

ROM_TOP = "romsim_rom"


def emit_rom(
    style: str,
    words: Sequence[int] | np.ndarray,
    width: int,
    *,
    corrupt: tuple[int, int] | None = None,
    build_dir: str | Path | None = None,
):
    """Verilog of the structural array into ``build_dir/rom_<style>_<rows>x<width>_<hash>/``
    (cached by content); returns a :class:`romsim.rtl.emit.BuildInfo` for :mod:`simrun`."""
    from .emit import DEFAULT_BUILD_DIR, BuildInfo

    w = _words(words, width)
    h = hashlib.sha256(json.dumps([style, width, corrupt, 1]).encode())
    h.update(np.asarray(w, np.uint64).tobytes())
    out = (
        Path(build_dir or DEFAULT_BUILD_DIR) / f"rom_{style}_{len(w)}x{width}_{h.hexdigest()[:16]}"
    )
    vpath = out / f"{ROM_TOP}.v"
    t0 = time.perf_counter()
    cached = vpath.is_file()
    if not cached:
        out.mkdir(parents=True, exist_ok=True)
        tmp = vpath.with_suffix(".v.tmp")
        tmp.write_text(rom_verilog(make_rom(style, w, width, corrupt=corrupt), ROM_TOP))
        tmp.replace(vpath)
    meta = {"rom_style": style, "rows": len(w), "width": width, "corrupt": corrupt}
    return BuildInfo(vpath, ROM_TOP, [], style, 1, time.perf_counter() - t0, cached, meta)


def run_rom_case(
    sim: str,
    style: str,
    words: Sequence[int] | np.ndarray,
    width: int,
    workdir: Path,
    *,
    corrupt: tuple[int, int] | None = None,
    build_dir: str | Path | None = None,
    check: bool = True,
) -> dict:
    """Build the array (``corrupt`` flips one stored bit of the structure only) and run
    ``sim/cocotb_brom.py`` on ``sim``: every address read back vs the image ``words``."""
    from . import simrun

    b = emit_rom(style, words, width, corrupt=corrupt, build_dir=build_dir)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    case = workdir / "rom_case.npz"
    np.savez(case, words=np.asarray(_words(words, width), np.uint64))
    return simrun.run_case(
        sim, b, case, workdir / f"rom_result_{sim}.json", check=check, tb_module="cocotb_brom"
    )
