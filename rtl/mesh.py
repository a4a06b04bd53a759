"""A slice of the mesh: matrix units (their cells, the unit's reduction, the activation
broadcast) and the links between them and the vector row.

* :class:`MatrixUnit` -- one matrix unit: ``cells_per_unit`` fused cells behind the unit's
  shared activation buffer (the broadcast's destination: every cell reads the same k-group
  entries), started together, and the unit's fp32 reduction of the cells' partials into row
  sums (the cross-cell adder: :class:`romsim.rtl.cell.RowBlock` with ``row_sums``).
* :class:`MeshSlice` -- ``len(units)`` matrix units, each ``hops[u]`` hops from the vector
  row. A link hop is ``hop_latency`` register stages (``interconnect.hop_latency_cycles``) in
  each direction: the broadcast (activation-buffer writes and the start) travels ``hops[u]``
  hops out to unit ``u``; the unit's row sums (and their valid) travel ``hops[u]`` hops back to
  the vector row's port. ``cycles`` = the start cycle at the vector row to the cycle the last
  unit's row sums are at the port.

Timing, ``R`` = ROM words of a unit's busiest cell, ``h`` = the farthest unit's hops,
``H`` = ``hop_latency``: ``tokens*R + 6`` (cell) ``+ 3`` (``ROW_SUM_CYCLES``) ``+ 2*h*H``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .cell import FusedCell, RowBlock, _w

MESH_TOP = "romsim_mesh"


def MatrixUnit(cells: list[FusedCell], max_tokens: int = 1) -> RowBlock:  # noqa: N802
    """A matrix unit: its cells, the shared activation buffer, the fp32 row reduction."""
    return RowBlock(cells, max_tokens=max_tokens, row_sums=True)


class MeshSlice(wiring.Component):
    """Units with their links (see the module docstring). Ports: the vector row's broadcast
    (``act_we/act_waddr/act_wdata``, ``start``, ``n_tokens``), per unit ``rows{u}`` (its row
    sums at the port, token-major), ``done`` and ``cycles``."""

    def __init__(self, units: list[RowBlock], hops: list[int], hop_latency: int = 2):
        if len(units) != len(hops) or not units:
            raise ValueError("one hop count per unit")
        self.units = units
        self.hops = hops
        self.hop_latency = hop_latency
        u0 = units[0]
        for u in units:
            if u.p0.entry_bits != u0.p0.entry_bits or u.depth != u0.depth:
                raise ValueError("the units of a slice share one activation broadcast format")
        sig = {
            "act_we": In(1),
            "act_waddr": In(_w(u0.depth)),
            "act_wdata": In(u0.p0.entry_bits),
            "start": In(1),
            "n_tokens": In(8),
            "done": Out(1),
            "cycles": Out(32),
        }
        for i, u in enumerate(units):
            sig[f"rows{i}"] = Out(u.max_tokens * u.n_rows * 32)
        super().__init__(sig)

    def elaborate(self, platform):
        m = Module()
        now = Signal(32)
        t0 = Signal(32)
        m.d.sync += now.eq(now + 1)
        with m.If(self.start):
            m.d.sync += t0.eq(now)
        arrived = []
        for i, (u, h) in enumerate(zip(self.units, self.hops, strict=True)):
            m.submodules[f"unit{i}"] = u
            # broadcast link: h hops out, hop_latency registers each
            sigs = [self.act_we, self.act_waddr, self.act_wdata, self.start, self.n_tokens]
            for k in range(h * self.hop_latency):
                nxt = [Signal.like(s, name=f"bc{i}_{k}_{j}") for j, s in enumerate(sigs)]
                m.d.sync += [n.eq(s) for n, s in zip(nxt, sigs, strict=True)]
                sigs = nxt
            we, wa, wd, st, nt = sigs
            m.d.comb += [
                u.act_we.eq(we),
                u.act_waddr.eq(wa),
                u.act_wdata.eq(wd),
                u.start.eq(st),
                u.n_tokens.eq(nt),
            ]
            # return link: the row sums and their valid, h hops back (valid only after this
            # unit's own start has arrived: its rows_done is stale until then)
            armed = Signal(name=f"armed{i}")
            with m.If(self.start):
                m.d.sync += armed.eq(0)
            with m.Elif(st):
                m.d.sync += armed.eq(1)
            ok, rows = u.rows_done & armed, u.rows
            for k in range(h * self.hop_latency):
                ok2 = Signal(name=f"rt{i}_{k}_ok")
                rows2 = Signal.like(rows, name=f"rt{i}_{k}_rows")
                with m.If(self.start):
                    m.d.sync += ok2.eq(0)
                with m.Else():
                    m.d.sync += ok2.eq(ok)
                m.d.sync += rows2.eq(rows)
                ok, rows = ok2, rows2
            m.d.comb += getattr(self, f"rows{i}").eq(rows)
            arrived.append(ok)
        all_in = Signal()
        m.d.comb += all_in.eq(Cat(*arrived).all())
        busy = Signal()
        end = Signal(32)
        with m.If(self.start):
            m.d.sync += busy.eq(1)
        with m.Elif(busy & all_in):
            m.d.sync += [busy.eq(0), end.eq(now)]
        m.d.comb += [self.done.eq(~busy & all_in), self.cycles.eq(end - t0)]
        return m


def emit_mesh(
    params: list[list],
    words: list[list],
    hops: list[int],
    *,
    hop_latency: int = 2,
    max_tokens: int = 2,
    build_dir=None,
    meta: dict | None = None,
):
    """Verilog of a :class:`MeshSlice` (``params[u][c]`` / ``words[u][c]``: unit ``u``'s cell
    ``c``) into ``build_dir/mesh_<hash>/romsim_mesh.v`` (cached by content)."""
    import hashlib
    import json
    import time
    from pathlib import Path

    import numpy as np
    from amaranth.back import verilog

    from .emit import DEFAULT_BUILD_DIR, BuildInfo

    h = hashlib.sha256()
    h.update(
        json.dumps(
            [[p.label() for p in ps] for ps in params] + [hops, hop_latency, max_tokens, 1]
        ).encode()
    )
    for ws in words:
        for w in ws:
            h.update(np.ascontiguousarray(w, np.uint64).tobytes())
    root = Path(build_dir) if build_dir else DEFAULT_BUILD_DIR
    out = root / f"mesh_{params[0][0].label()}_u{len(params)}x{len(params[0])}_{h.hexdigest()[:16]}"
    vpath = out / f"{MESH_TOP}.v"
    flat = [p for ps in params for p in ps]
    if not vpath.is_file():
        t0 = time.perf_counter()
        units = [
            MatrixUnit([FusedCell(p, w) for p, w in zip(ps, ws, strict=True)], max_tokens)
            for ps, ws in zip(params, words, strict=True)
        ]
        top = MeshSlice(units, hops, hop_latency)
        text = verilog.convert(top, name=MESH_TOP, emit_src=False)
        out.mkdir(parents=True, exist_ok=True)
        tmp = vpath.with_suffix(".v.tmp")
        tmp.write_text(text)
        tmp.replace(vpath)
        info = {
            "gen_seconds": time.perf_counter() - t0,
            "n_rows": [u.n_rows for u in units],
            "meta": meta or {},
        }
        (out / "build.json").write_text(json.dumps(info, indent=1))
    info = json.loads((out / "build.json").read_text())
    b = BuildInfo(vpath, MESH_TOP, flat, "fused", max_tokens, info["gen_seconds"], True, meta or {})
    return b, info["n_rows"]
