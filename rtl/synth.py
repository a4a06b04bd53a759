"""Yosys synthesis of the cell's compute for area: cell counts -> NAND2-equivalents -> um^2.

Pinned tool: Debian's Yosys 0.23 (``/usr/bin/yosys``); other versions give other counts
(docs/rtl.md). The synthesized block is :class:`~romsim.rtl.cell.CellCore` -- address generator,
decoder, MAC array, group accumulator, zero correction, metadata register -- with the ROM as ports:
the ROM array's area comes from the area model's bit-cell figures, not from logic synthesis.
Script: ``read_verilog; synth -top CORE; flatten; stat`` (hierarchy kept during optimisation so
the conventional cell's generic 8-bit MAC block is not shrunk by constants from its decoder).

NAND2-equivalents per Yosys internal gate: the cell's area in the NanGate 45 nm Open Cell
Library (FreePDK45, v2010) divided by NAND2_X1's 0.798 um^2 (INV 0.532, AND2/OR2 1.064,
XOR2/XNOR2 1.596, MUX2 1.862, AOI21/OAI21 1.064, AOI22/OAI22 1.330, DFF 4.522, DFFR 5.320). Cells
the library lacks are composed: a flop with enable = DFF + MUX2, with synchronous reset = DFF +
AND2. um^2 = NAND2-eq x ``romsim.area.tech.NAND2_UM2`` (cell area, before placement utilisation).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .params import CellParams

YOSYS_PINNED = "0.23"
SCHEMA = "romsim.synth_calibration/1"
CALIBRATION_PATH = (
    Path(__file__).resolve().parents[1] / "romsim" / "area" / "synth_calibration.json"
)
GATE_SOURCE = "NanGate 45nm Open Cell Library (FreePDK45) cell areas / NAND2_X1 (0.798 um2)"

_DFF, _DFFR, _MUX, _AND = 4.522 / 0.798, 5.320 / 0.798, 1.862 / 0.798, 1.064 / 0.798
NAND2_EQ: dict[str, float] = {
    "$_NOT_": 0.532 / 0.798,
    "$_BUF_": 1.0,
    "$_NAND_": 1.0,
    "$_NOR_": 1.0,
    "$_AND_": _AND,
    "$_OR_": _AND,
    "$_ANDNOT_": _AND,
    "$_ORNOT_": _AND,
    "$_XOR_": 1.596 / 0.798,
    "$_XNOR_": 1.596 / 0.798,
    "$_MUX_": _MUX,
    "$_AOI3_": 1.064 / 0.798,
    "$_OAI3_": 1.064 / 0.798,
    "$_AOI4_": 1.330 / 0.798,
    "$_OAI4_": 1.330 / 0.798,
}


def gate_weight(cell: str) -> float:
    """NAND2-equivalents of one Yosys internal cell type (flops by their pattern)."""
    if cell in NAND2_EQ:
        return NAND2_EQ[cell]
    m = re.fullmatch(r"\$_(DFF|DFFE|SDFF|SDFFE|SDFFCE|DFFSR|DFFSRE|ALDFF|ALDFFE)_([PN01]+)_", cell)
    if m:
        kind, pol = m.group(1), m.group(2)
        async_reset = (kind == "DFF" and len(pol) == 3) or (kind == "DFFE" and len(pol) == 4)
        if kind.startswith(("DFFSR", "ALDFF")) or async_reset:
            w = _DFFR
        else:
            w = _DFF
        if kind.endswith("E"):
            w += _MUX
        if kind.startswith("SDFF"):
            w += _AND
        return w
    raise KeyError(f"no NAND2-equivalent for Yosys cell {cell!r}")


@dataclass
class SynthResult:
    bits: int
    style: str
    cells: dict[str, int]
    nand2_eq: float
    um2: float
    seconds: float
    yosys_version: str
    params: dict

    def as_dict(self) -> dict:
        return {
            "nand2_eq": round(self.nand2_eq, 1),
            "um2": round(self.um2, 2),
            "yosys_cells": dict(sorted(self.cells.items())),
            "n_cells": int(sum(self.cells.values())),
            "flops": int(sum(v for k, v in self.cells.items() if "DFF" in k)),
            "seconds": round(self.seconds, 1),
        }


def yosys_version(exe: str = "yosys") -> str:
    path = shutil.which(exe)
    if path is None:
        raise FileNotFoundError("yosys not found (apt-get install yosys; pinned 0.23)")
    out = subprocess.run([path, "-V"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"Yosys (\S+)", out)
    return m.group(1) if m else out.strip()


def parse_stat(text: str) -> dict[str, int]:
    """Cell counts from the last ``stat`` block of a Yosys log."""
    block = text[text.rfind("Number of cells:") :]
    cells: dict[str, int] = {}
    for line in block.splitlines()[1:]:
        m = re.match(r"\s+(\$\S+)\s+(\d+)\s*$", line)
        if m:
            cells[m.group(1)] = int(m.group(2))
        elif cells and not line.strip():
            break
    return cells


def synth_params(bits: int, **kw) -> CellParams:
    """The representative cell synthesized per bit width: 64-bit words, int8 activations, 32-bit
    accumulator, a 9728-word ROM (the default chip's macro_rows: full-width address counters),
    a tile of 120 groups of a K=576 matrix (SmolLM2 gate/up on the 64-cell test chip)."""
    from romsim.config import RomConfig

    d = dict(
        bits=bits,
        group_size=128,
        word_bits=64,
        act_bits=8,
        acc_bits=32,
        n_groups=120,
        ng_row=5,
        kg0=0,
        depth=RomConfig().macro_rows,
    )
    d.update(kw)
    return CellParams(**d)


def synth_core(
    p: CellParams,
    style: str = "fused",
    *,
    exe: str = "yosys",
    keep_dir: Path | None = None,
    check_version: bool = True,
) -> SynthResult:
    from .emit import emit_core

    ver = yosys_version(exe)
    if check_version and not ver.startswith(YOSYS_PINNED):
        raise RuntimeError(f"yosys {ver} found; the calibration is pinned to {YOSYS_PINNED}")
    from romsim.area import tech

    with tempfile.TemporaryDirectory(prefix="romsim_synth_") as td:
        d = keep_dir or Path(td)
        d.mkdir(parents=True, exist_ok=True)
        v = emit_core(p, style, d)
        top = v.stem
        script = f"read_verilog {v.name}\nsynth -top {top}\nflatten\nstat\n"
        (d / "synth.ys").write_text(script)
        t0 = time.perf_counter()
        r = subprocess.run(
            [shutil.which(exe), "-q", "-l", "synth.log", "-s", "synth.ys"],
            cwd=d,
            capture_output=True,
            text=True,
        )
        secs = time.perf_counter() - t0
        log = (d / "synth.log").read_text() if (d / "synth.log").is_file() else r.stdout
        if r.returncode:
            raise RuntimeError(f"yosys failed: {r.stderr.strip()[-2000:]}")
    cells = parse_stat(log)
    if not cells:
        raise RuntimeError("no cell counts in the yosys log")
    nand2 = sum(gate_weight(c) * n for c, n in cells.items())
    pd = {k: v for k, v in p.__dict__.items() if k != "_derived"}
    return SynthResult(p.bits, style, cells, nand2, nand2 * tech.NAND2_UM2, secs, ver, pd)


def calibration(results: list[SynthResult]) -> dict:
    """The JSON the area model reads (schema in docs/rtl.md)."""
    from romsim.area import tech

    r0 = results[0]
    common = {
        k: r0.params[k]
        for k in ("group_size", "word_bits", "act_bits", "acc_bits", "n_groups", "ng_row", "depth")
    }
    out: dict = {
        "schema": SCHEMA,
        "generated_by": "romsim rtl synth --all --write-calibration",
        "yosys_version": r0.yosys_version,
        "script": "read_verilog; synth -top <core>; flatten; stat",
        "gate_source": GATE_SOURCE,
        "nand2_um2": tech.NAND2_UM2,
        "block": "romsim.rtl.cell.CellCore (compute of one fused cell; ROM array excluded)",
        "config": common | {"mac_weight_bits_per_cycle": r0.params["word_bits"]},
        "gate_weights": {k: round(v, 4) for k, v in NAND2_EQ.items()},
        "styles": {},
    }
    for r in results:
        out["styles"].setdefault(r.style, {})[str(r.bits)] = r.as_dict()
    return out


def write_calibration(data: dict, path: Path = CALIBRATION_PATH) -> Path:
    """Write ``data`` atomically; an existing file's ``logic_rom`` entry (measured by
    ``romsim rtl synth --rom-style rom --flatten``, not by ``--all``) is kept."""
    path = Path(path)
    if path.is_file() and "logic_rom" not in data:
        old = json.loads(path.read_text())
        if "logic_rom" in old:
            data = data | {"logic_rom": old["logic_rom"]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path


def area_table(cal: dict, chip=None) -> list[dict]:
    """Per bit width and style: compute (synthesis) + ROM array (area model) for one cell of
    ``chip`` (default: the roma-3b-w4 preset's cell geometry)."""
    from romsim.area.model import rom_array_mm2
    from romsim.area.tech import LOGIC_UTILISATION
    from romsim.config import load_chip
    from romsim.units import UM2_PER_MM2

    chip = chip or load_chip("roma-3b-w4")
    rows = []
    for bits in sorted({int(b) for s in cal["styles"].values() for b in s}):
        row = {"bits": bits}
        for style, rom_style in (("fused", "brom"), ("conventional", "rom")):
            e = cal["styles"].get(style, {}).get(str(bits))
            if e is None:
                continue
            comp = e["um2"] / LOGIC_UTILISATION
            rom = rom_array_mm2(chip.rom.bits_per_cell, chip.rom.bank_rows, rom_style) * UM2_PER_MM2
            cell = max(rom, comp) if style == "fused" else rom + comp
            row[style] = {
                "nand2_eq": e["nand2_eq"],
                "flops": e["flops"],
                "compute_um2": comp,
                "rom_um2": rom,
                "cell_um2": cell,
            }
        rows.append(row)
    return rows


# ---- structural ROM arrays: transistors and NAND2-eq per stored bit ---------------------------

ROM_SCRIPT = (
    "read_verilog {v}; synth -top {top}{flat}; tee -o nand2.txt stat; "
    "abc -g cmos2; tee -o cmos.txt stat -tech cmos"
)
SRAM_TRANSISTORS_PER_BIT = 6  # a 6T SRAM bit cell (stated, not synthesized)


@dataclass
class RomSynthResult:
    """Yosys counts of one structural ROM array (:mod:`romsim.rtl.brom`) of ``rows x width``."""

    style: str
    rows: int
    width: int
    ones: int
    flatten: bool
    cells: dict[str, int]  # after ``synth`` (Yosys' internal gate library)
    nand2_eq: float
    cmos_cells: dict[str, int]  # after ``abc -g cmos2``
    transistors: int  # ``stat -tech cmos``: "Estimated number of transistors"
    seconds: float
    yosys_version: str

    @property
    def bits(self) -> int:
        return self.rows * self.width

    def as_dict(self) -> dict:
        return {
            "style": self.style,
            "rows": self.rows,
            "width": self.width,
            "bits": self.bits,
            "ones": self.ones,
            "flatten": self.flatten,
            "transistors": self.transistors,
            "transistors_per_bit": self.transistors / self.bits,
            "nand2_eq": round(self.nand2_eq, 1),
            "nand2_eq_per_bit": self.nand2_eq / self.bits,
            "nand2_eq_per_one_bit": self.nand2_eq / max(self.ones, 1),
            "yosys_cells": dict(sorted(self.cells.items())),
            "cmos_cells": dict(sorted(self.cmos_cells.items())),
            "seconds": round(self.seconds, 2),
            "yosys_version": self.yosys_version,
        }


def parse_transistors(text: str) -> int:
    """The last "Estimated number of transistors" of a ``stat -tech cmos`` log (with hierarchy:
    the design total)."""
    hits = re.findall(r"Estimated number of transistors:\s+(\d+)", text)
    if not hits:
        raise RuntimeError("no transistor estimate in the yosys log (stat -tech cmos)")
    return int(hits[-1])


def synth_rom(
    style: str,
    words,
    width: int,
    *,
    flatten: bool = False,
    exe: str = "yosys",
    keep_dir: Path | None = None,
    check_version: bool = True,
) -> RomSynthResult:
    """Synthesize the structural array of ``words`` (``style`` brom|rom): ``synth -top`` (block
    hierarchy kept unless ``flatten``: with it Yosys/ABC re-minimise the image as logic), NAND2-eq
    from the gate counts, then ``abc -g cmos2; stat -tech cmos`` for the transistor estimate."""
    from .brom import make_rom, rom_verilog

    ver = yosys_version(exe)
    if check_version and not ver.startswith(YOSYS_PINNED):
        raise RuntimeError(f"yosys {ver} found; the counts are pinned to {YOSYS_PINNED}")
    rom = make_rom(style, words, width)
    top = f"rom_{style}"
    ones = sum(int(w).bit_count() for w in rom.image)
    with tempfile.TemporaryDirectory(prefix="romsim_synth_rom_") as td:
        d = keep_dir or Path(td)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{top}.v").write_text(rom_verilog(rom, top))
        script = ROM_SCRIPT.format(v=f"{top}.v", top=top, flat=" -flatten" if flatten else "")
        (d / "synth.ys").write_text(script.replace("; ", "\n") + "\n")
        t0 = time.perf_counter()
        r = subprocess.run(
            [shutil.which(exe), "-q", "-s", "synth.ys"], cwd=d, capture_output=True, text=True
        )
        secs = time.perf_counter() - t0
        if r.returncode:
            raise RuntimeError(f"yosys failed: {r.stderr.strip()[-2000:]}")
        nand_log = (d / "nand2.txt").read_text()
        cmos_log = (d / "cmos.txt").read_text()
    cells = parse_stat(nand_log)
    nand2 = sum(gate_weight(c) * n for c, n in cells.items())
    return RomSynthResult(
        style,
        len(rom.image),
        width,
        ones,
        flatten,
        cells,
        nand2,
        parse_stat(cmos_log),
        parse_transistors(cmos_log),
        secs,
        ver,
    )


def rom_image(
    rows: int,
    width: int = 64,
    *,
    bits: int = 4,
    random: bool = False,
    seed: int = 0,
    one_fraction: float = 0.5,
    model: str = "smollm2-135m",
    layer: int = 0,
    matrix: str = "q",
) -> tuple[list[int], str]:
    """A ROM image of ``rows`` ``width``-bit words and where it came from. Real: the first
    ``rows`` words of the run of groups ``[0, n)`` of ``layers.LAYER.MATRIX`` at ``bits``
    (``romsim.rtl.tile.tile_words``: codes, then the run's metadata; ``n`` the fewest groups that
    give ``rows`` words) -- SmolLM2-135M weights re-quantized, as in the cocotb tests. Random:
    independent bits, 1 with probability ``one_fraction`` (numpy seed ``seed``)."""
    if random:
        rng = np.random.default_rng(seed)
        b = (rng.random((rows, width)) < one_fraction).astype(np.uint64)
        w = (b << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
        return [int(x) for x in w], f"random bits p(1)={one_fraction} seed={seed}"
    from .tile import matrix_qtensor, tile_words

    qt, src = matrix_qtensor(model, layer, matrix, bits, 128)
    per_group = 128 * bits / width
    n = max(1, int(rows / per_group))
    while True:
        w = tile_words(qt, 0, n, width)
        if w.size >= rows or n >= qt.n_groups * qt.n:
            break
        n += 1
    if w.size < rows:
        raise ValueError(f"{model} layer {layer} {matrix} has fewer than {rows} words")
    return [int(x) for x in w[:rows]], f"{model}:{layer}:{matrix} groups [0, {n}): {src}"


def rom_comparison(
    words: list[int],
    width: int,
    styles: tuple[str, ...] = ("brom", "rom"),
    *,
    flatten: bool = False,
) -> dict:
    """Per style the Yosys counts (transistors, NAND2-eq; per stored bit and per 1-bit) plus the
    image's bit statistics and the device-level array model (:func:`romsim.rtl.brom.image_stats`)
    and the 6T SRAM reference."""
    from .brom import image_stats

    st = image_stats(words, width)
    out: dict = {"image": st, "sram_6t_transistors_per_bit": SRAM_TRANSISTORS_PER_BIT}
    for s in styles:
        out[s] = synth_rom(s, words, width, flatten=flatten).as_dict()
    if "brom" in out and "rom" in out:
        out["brom_over_rom"] = {
            "transistors": out["brom"]["transistors"] / out["rom"]["transistors"],
            "nand2_eq": out["brom"]["nand2_eq"] / out["rom"]["nand2_eq"],
            "devices_vs_rom_per_bit": st["devices"]["brom_per_group_col"]
            / st["devices"]["rom_per_bit"],
            "devices_vs_rom_per_one": st["devices"]["brom_per_group_col"]
            / max(st["devices"]["rom_per_one"], 1),
        }
    return out
