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
    path = Path(path)
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
