"""Verilog emission of cells and row-blocks into a build folder (never committed: build/ is
gitignored). Amaranth writes every initial ROM word as its own Verilog line, so a file grows with
the tile; :func:`emit_rowblock` records the generation time in the build's ``build.json``."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .params import CellParams

DEFAULT_BUILD_DIR = Path("build") / "rtl"
TOP_NAME = "romsim_rowblock"


@dataclass
class BuildInfo:
    verilog: Path
    top: str
    params: list[CellParams]
    style: str
    max_tokens: int
    gen_seconds: float
    cached: bool
    meta: dict

    @property
    def dir(self) -> Path:
        return self.verilog.parent


def _key(
    params: list[CellParams],
    words: list[np.ndarray],
    style: str,
    max_tokens: int,
    row_sums: bool,
    rom: tuple = (),
) -> str:
    h = hashlib.sha256()
    extra = [list(rom)] if rom else []
    h.update(
        json.dumps([p.label() for p in params] + [style, max_tokens, row_sums, 3] + extra).encode()
    )
    for w in words:
        h.update(np.ascontiguousarray(w, np.uint64).tobytes())
    return h.hexdigest()[:16]


def emit_rowblock(
    params: list[CellParams],
    words: list[np.ndarray],
    *,
    style: str = "fused",
    max_tokens: int = 1,
    row_sums: bool = False,
    build_dir: str | os.PathLike | None = None,
    meta: dict | None = None,
    force: bool = False,
    rom_style: str = "memory",
    rom_corrupt: tuple[int, int, int] | None = None,
) -> BuildInfo:
    """Verilog of a :class:`~romsim.rtl.cell.RowBlock` of cells holding ``words`` (one tile per
    cell) into ``build_dir/<hash>/romsim_rowblock.v``; reuses an existing build of the same
    content unless ``force``. ``rom_style``: the cells' ROM (``FusedCell``: "memory" behavioural,
    "brom"/"rom" structural, :mod:`romsim.rtl.brom`); ``rom_corrupt = (cell, row, col)`` flips one
    stored bit in that cell's structural array only."""
    from amaranth.back import verilog

    from .cell import FusedCell, RowBlock

    root = Path(build_dir) if build_dir else DEFAULT_BUILD_DIR
    rom = () if rom_style == "memory" else (rom_style, rom_corrupt)
    key = _key(params, words, style, max_tokens, row_sums, rom)
    rs = "_rows" if row_sums else ""
    rs += "" if rom_style == "memory" else f"_{rom_style}"
    out = root / f"{style}_{params[0].label()}_x{len(params)}{rs}_{key}"
    vpath = out / f"{TOP_NAME}.v"
    jpath = out / "build.json"
    if vpath.is_file() and jpath.is_file() and not force:
        info = json.loads(jpath.read_text())
        return BuildInfo(
            vpath,
            TOP_NAME,
            params,
            style,
            max_tokens,
            info["gen_seconds"],
            True,
            info.get("meta", {}),
        )
    t0 = time.perf_counter()
    cells = [
        FusedCell(
            p,
            w,
            style=style,
            rom_style=rom_style,
            rom_corrupt=rom_corrupt[1:] if rom_corrupt and rom_corrupt[0] == i else None,
        )
        for i, (p, w) in enumerate(zip(params, words, strict=True))
    ]
    top = RowBlock(cells, max_tokens=max_tokens, row_sums=row_sums)
    text = verilog.convert(top, name=TOP_NAME, emit_src=False)
    gen_s = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    tmp = vpath.with_suffix(".v.tmp")
    tmp.write_text(text)
    tmp.replace(vpath)
    info = {
        "top": TOP_NAME,
        "style": style,
        "max_tokens": max_tokens,
        "row_sums": row_sums,
        "n_rows": getattr(top, "n_rows", None),
        "gen_seconds": gen_s,
        "verilog_bytes": len(text),
        "verilog_lines": text.count("\n"),
        "cells": [asdict(p) | {"rom_rows": p.rom_rows, "lanes": p.lanes} for p in params],
        "latency_cycles": cells[0].latency,
        "meta": meta or {},
    }
    for c in info["cells"]:
        c.pop("_derived", None)
    jpath.write_text(json.dumps(info, indent=1))
    return BuildInfo(vpath, TOP_NAME, params, style, max_tokens, gen_s, False, meta or {})


def emit_multicell(
    tiles: list[CellParams],
    words: np.ndarray,
    *,
    build_dir: str | os.PathLike | None = None,
    meta: dict | None = None,
) -> BuildInfo:
    """Verilog of a RowBlock around one cell holding several matrices (``tiles`` in ROM order,
    ``words`` its whole image) with a ``sel`` input; cached like :func:`emit_rowblock`."""
    from amaranth.back import verilog

    from .cell import FusedCell, RowBlock, envelope_params

    env = envelope_params(tiles)
    root = Path(build_dir) if build_dir else DEFAULT_BUILD_DIR
    key = _key(tiles, [words], "multi", 1, False)
    out = root / f"multi_{env.label()}_m{len(tiles)}_{key}"
    vpath = out / f"{TOP_NAME}.v"
    if not vpath.is_file():
        t0 = time.perf_counter()
        top = RowBlock([FusedCell(env, words, tiles=tiles)], max_tokens=1)
        text = verilog.convert(top, name=TOP_NAME, emit_src=False)
        out.mkdir(parents=True, exist_ok=True)
        tmp = vpath.with_suffix(".v.tmp")
        tmp.write_text(text)
        tmp.replace(vpath)
        (out / "build.json").write_text(
            json.dumps({"gen_seconds": time.perf_counter() - t0, "meta": meta or {}}, indent=1)
        )
    gen = json.loads((out / "build.json").read_text())["gen_seconds"]
    return BuildInfo(vpath, TOP_NAME, [env], "fused", 1, gen, True, meta or {})


def emit_core(
    p: CellParams, style: str = "fused", out_dir: str | os.PathLike | None = None
) -> Path:
    """Verilog of the compute alone (:class:`~romsim.rtl.cell.CellCore`, ROM as ports) -- what
    synthesis measures."""
    from amaranth.back import verilog

    from .cell import CellCore

    root = Path(out_dir) if out_dir else DEFAULT_BUILD_DIR / "synth"
    root.mkdir(parents=True, exist_ok=True)
    name = f"cellcore_{style}_w{p.bits}"
    path = root / f"{name}.v"
    path.write_text(verilog.convert(CellCore(p, style=style), name=name, emit_src=False))
    return path
