"""Timeline of one prefill and a few decode tokens (``romsim trace``), for ui.perfetto.dev.

The performance model (:mod:`romsim.perf.model`) prices a step as a sequence of ops, each a set
of overlapping stages on the chip's resources; an op costs its latency plus its slowest stage and
starts when the previous op ends. This module lays those ops on a time axis:

- one process (the chip) with one track per resource class (ROM reads, MACs, broadcast, ...),
  plus a ``phase`` track (prefill, decode token k) and a ``layer`` track;
- each op is a complete event on the track of its bounding resource with the full op duration;
  every other stage with load is an event of the same name on its own track, starting with the
  op and lasting its stage cycles;
- counters: SRAM in use (LoRA adapters, SRAM embedding table, KV cache growing as ``kv_write``
  ops run), power (an op's dynamic energy over its duration plus the leakage of its busy
  resources) and cumulative energy.

Two writers read the same spans: Chrome Trace Event JSON (``ts``/``dur`` in microseconds,
strict JSON) and, when the optional ``perfetto`` package is installed, a Perfetto protobuf
(TrackEvent slices and counters, timestamps in nanoseconds). ``--layers N`` expands only the
first N decoder layers of each step; the rest, identical in LLaMA, become one collapsed event on
the ``layer`` track so that every phase keeps its full duration.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from romsim.errors import RomsimInputError

if TYPE_CHECKING:
    from romsim.config import ChipConfig
    from romsim.modelspec import ModelSpec
    from romsim.perf.model import PerfModel
    from romsim.perf.ops import Op

RESOURCE_NAMES: dict[str, str] = {
    "rom": "ROM reads",
    "mac": "MACs",
    "bcast": "broadcast",
    "reduce": "reduce",
    "h_mac": "H-Unit",
    "sram": "SRAM",
    "vec": "vector",
    "sfu": "SFU",
    "link": "link",
    "offchip": "off-chip",
}
LATENCY = "latency"  # the track of an op with no stage load (fixed latency only)

PID = 1
TID_PHASE = 1
TID_LAYER = 2
TID_RESOURCE0 = 10  # resources in romsim.perf.ops.RESOURCES order from here
TID_LATENCY = 40

COUNTER_SRAM = "SRAM in use"
COUNTER_POWER = "power"
COUNTER_ENERGY = "energy"

MAX_EVENTS = 2_000_000  # about 400 MB of JSON; --layers 1 keeps any prompt far below


# --------------------------------------------------------------------------------------- costs
@dataclass(frozen=True)
class OpCost:
    """One op evaluated at one context length."""

    name: str
    group: str
    latency_cycles: float
    stage_cycles: dict[str, float]  # stages with load, in RESOURCES order
    cycles: float  # latency + the slowest stage
    bound_by: str  # a resource, or "latency" when no stage has load
    actions: dict[str, float]
    action_energy_j: dict[str, float]
    leakage_w: float
    seconds: float
    kv_bytes: float  # KV cache bytes this op writes to SRAM

    @property
    def dynamic_j(self) -> float:
        return sum(self.action_energy_j.values())

    @property
    def leakage_j(self) -> float:
        return self.leakage_w * self.seconds

    @property
    def energy_j(self) -> float:
        return self.dynamic_j + self.leakage_j

    @property
    def power_w(self) -> float:
        return self.energy_j / self.seconds if self.seconds > 0 else self.leakage_w


@dataclass
class Block:
    """Ops laid down one after another: one decoder layer, a run of identical layers collapsed
    into one event (``repeat`` > 1), or the per-token ops outside the layers."""

    label: str
    layer: int | None  # first layer of the block; None for the per-token ops
    ops: list[OpCost]
    repeat: int = 1

    @property
    def cycles(self) -> float:
        return self.repeat * sum(o.cycles for o in self.ops)

    @property
    def energy_j(self) -> float:
        return self.repeat * sum(o.energy_j for o in self.ops)

    @property
    def kv_bytes(self) -> float:
        return self.repeat * sum(o.kv_bytes for o in self.ops)


@dataclass
class Phase:
    name: str
    ctx: int  # tokens in the KV cache when the phase starts
    tokens: int  # tokens the phase processes (per sequence)
    blocks: list[Block]

    @property
    def cycles(self) -> float:
        return sum(b.cycles for b in self.blocks)


class _Pricer:
    """Evaluates ops of the performance model at a context length, with their energy."""

    def __init__(self, pm: PerfModel):
        from romsim.area.energy import action_energy_j
        from romsim.area.model import leakage_w

        self.pm = pm
        self.chip = pm.chip
        self.clock_hz = float(pm.chip.clock_hz)
        self.e = action_energy_j(pm.chip)
        self._leakage_w = leakage_w

    def cost(self, op: Op, ctx: float) -> OpCost:
        from romsim.perf.ops import RESOURCES

        loads = {r: op.stages[r][0] + op.stages[r][1] * ctx for r in RESOURCES if r in op.stages}
        slowest = max(loads.values(), default=0.0)
        cycles = op.latency_cycles + slowest
        stages = {r: v for r, v in loads.items() if v > 0}
        bound = max(stages, key=lambda r: stages[r]) if stages else LATENCY
        actions = {k: a + b * ctx for k, (a, b) in op.events.items()}
        actions["clock_cycles"] = float(cycles)  # the die's clock ticks through the op
        energy = {k: v * self.e[k] for k, v in actions.items()}
        busy = {r: v / cycles for r, v in stages.items()} if cycles > 0 else {}
        kv = actions.get("sram_write_bytes", 0.0) if op.group == "kv_write" else 0.0
        return OpCost(
            name=op.name,
            group=op.group,
            latency_cycles=float(op.latency_cycles),
            stage_cycles=stages,
            cycles=float(cycles),
            bound_by=bound,
            actions=actions,
            action_energy_j=energy,
            leakage_w=self._leakage_w(self.chip, busy),
            seconds=float(cycles) / self.clock_hz,
            kv_bytes=float(kv),
        )


def _layer_blocks(layer: list[OpCost], n_layers: int, expand: int) -> list[Block]:
    blocks = [Block(f"layer {i}", i, layer) for i in range(min(expand, n_layers))]
    if expand < n_layers:
        rest = n_layers - expand
        label = f"layer {expand}" if rest == 1 else f"layers {expand}-{n_layers - 1}"
        blocks.append(Block(f"{label} (collapsed, {rest} identical)", expand, layer, rest))
    return blocks


def build_phases(
    pm: PerfModel, prompt_len: int, decode_tokens: int, layers: int | None = None
) -> list[Phase]:
    """The prefill (in the model's chunks) and ``decode_tokens`` decode steps, at the context
    lengths :func:`romsim.estimate.estimate` uses (step k sees ``prompt_len + k`` cached)."""
    pricer = _Pricer(pm)
    L = pm.model.n_layers
    expand = L if layers is None else max(1, min(layers, L))
    phases: list[Phase] = []
    blocks: list[Block] = []
    # the prefill's order of PerfModel.prefill_ops: chunk by chunk, every layer, then the head
    chunk = pm.prefill_chunk(prompt_len)
    chunked = chunk < prompt_len
    done = 0
    while done < prompt_len:
        T = min(chunk, prompt_len - done)
        layer = [pricer.cost(op, 0.0) for op in pm.layer_ops(T, decode=False, ctx0=done)]
        for b in _layer_blocks(layer, L, expand):
            if chunked:
                b.label = f"tokens {done}-{done + T - 1}: {b.label}"
            blocks.append(b)
        done += T
    blocks.append(Block("token ops", None, [pricer.cost(op, 0.0) for op in pm.token_ops(1)]))
    phases.append(Phase("prefill", 0, prompt_len, blocks))
    for k in range(decode_tokens):
        ctx = float(prompt_len + k)
        layer = [pricer.cost(op, ctx) for op in pm.decode_table.ops]
        blocks = _layer_blocks(layer, L, expand)
        blocks.append(Block("token ops", None, [pricer.cost(op, ctx) for op in pm.token_table.ops]))
        phases.append(Phase(f"decode token {k}", prompt_len + k, 1, blocks))
    return phases


# --------------------------------------------------------------------------------------- spans
@dataclass(frozen=True)
class Span:
    track: str  # "phase", "layer", a resource, or "latency"
    name: str
    start: float  # cycles from the start of the trace
    dur: float  # cycles
    args: dict[str, Any]


@dataclass(frozen=True)
class Sample:
    counter: str
    t: float  # cycles
    values: dict[str, float]


@dataclass
class Timeline:
    model: str
    chip: str
    clock_hz: float
    prompt_len: int
    decode_tokens: int
    layers_expanded: int
    n_layers: int
    phases: list[Phase]
    spans: list[Span] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    @property
    def total_cycles(self) -> float:
        return sum(p.cycles for p in self.phases)

    @property
    def total_energy_j(self) -> float:
        return sum(b.energy_j for p in self.phases for b in p.blocks)

    def tracks(self) -> list[str]:
        """Tracks in display order (resources without any event are left out)."""
        from romsim.perf.ops import RESOURCES

        used = {s.track for s in self.spans}
        return ["phase", "layer"] + [t for t in (*RESOURCES, LATENCY) if t in used]

    def summary(self) -> dict[str, Any]:
        prefill = self.phases[0].cycles
        return {
            "model": self.model,
            "chip": self.chip,
            "clock_hz": self.clock_hz,
            "prompt_len": self.prompt_len,
            "decode_tokens": self.decode_tokens,
            "n_layers": self.n_layers,
            "layers_expanded": self.layers_expanded,
            "ttft_s": prefill / self.clock_hz,
            "decode_s": (self.total_cycles - prefill) / self.clock_hz,
            "total_s": self.total_cycles / self.clock_hz,
            "total_energy_j": self.total_energy_j,
            "time_unit": "ts and dur in microseconds",
        }


def _op_args(phase: str, layer: int | None, o: OpCost) -> dict[str, Any]:
    return {
        "phase": phase,
        "layer": layer,
        "group": o.group,
        "cycles": o.cycles,
        "latency_cycles": o.latency_cycles,
        "stage_cycles": o.stage_cycles,
        "bound_by": o.bound_by,
        "actions": o.actions,
        "energy_j": {
            "dynamic": o.dynamic_j,
            "leakage": o.leakage_j,
            "total": o.energy_j,
            "by_action": o.action_energy_j,
        },
        "power_w": o.power_w,
    }


def count_events(phases: list[Phase]) -> int:
    """Trace events ``lay_out`` will make (spans + counter samples), before making them."""
    n = 4
    for p in phases:
        n += 1
        for b in p.blocks:
            n += 1
            if b.repeat > 1:
                n += 3
                continue
            for o in b.ops:
                n += max(1, len(o.stage_cycles)) + 2 + (1 if o.kv_bytes else 0)
    return n


def lay_out(tl: Timeline, sram_base: dict[str, float]) -> Timeline:
    """Fill ``tl.spans`` and ``tl.samples`` from ``tl.phases``: ops back to back from t = 0."""
    t = 0.0
    energy = 0.0
    kv = 0.0
    spans, samples = tl.spans, tl.samples

    def sram(at: float) -> None:
        samples.append(Sample(COUNTER_SRAM, at, {**sram_base, "kv_cache_bytes": kv}))

    sram(0.0)
    samples.append(Sample(COUNTER_ENERGY, 0.0, {"J": 0.0}))
    for p in tl.phases:
        p0 = t
        for b in p.blocks:
            b0 = t
            if b.repeat > 1:  # identical layers: one event, average power over the run
                dur = b.cycles
                samples.append(Sample(COUNTER_POWER, t, {"W": b.energy_j / (dur / tl.clock_hz)}))
                t += dur
                energy += b.energy_j
                kv += b.kv_bytes
                samples.append(Sample(COUNTER_ENERGY, t, {"J": energy}))
                if b.kv_bytes:
                    sram(t)
            else:
                for o in b.ops:
                    samples.append(Sample(COUNTER_POWER, t, {"W": o.power_w}))
                    spans.append(
                        Span(o.bound_by, o.name, t, o.cycles, _op_args(p.name, b.layer, o))
                    )
                    for r, c in o.stage_cycles.items():
                        if r != o.bound_by:
                            args = {
                                "phase": p.name,
                                "layer": b.layer,
                                "stage": r,
                                "stage_cycles": c,
                                "op_cycles": o.cycles,
                                "bound_by": o.bound_by,
                            }
                            spans.append(Span(r, o.name, t, c, args))
                    t += o.cycles
                    energy += o.energy_j
                    samples.append(Sample(COUNTER_ENERGY, t, {"J": energy}))
                    if o.kv_bytes:
                        kv += o.kv_bytes
                        sram(t)
            spans.append(
                Span(
                    "layer",
                    b.label,
                    b0,
                    t - b0,
                    {
                        "phase": p.name,
                        "layer": b.layer,
                        "layers": b.repeat,
                        "cycles": t - b0,
                        "energy_j": b.energy_j,
                        "busy_cycles": _busy(b),
                    },
                )
            )
        spans.append(
            Span(
                "phase",
                p.name,
                p0,
                t - p0,
                {
                    "ctx": p.ctx,
                    "tokens": p.tokens,
                    "cycles": t - p0,
                    "energy_j": sum(b.energy_j for b in p.blocks),
                },
            )
        )
    samples.append(Sample(COUNTER_POWER, t, {"W": 0.0}))
    return tl


def _busy(b: Block) -> dict[str, float]:
    out: dict[str, float] = {}
    for o in b.ops:
        for r, c in o.stage_cycles.items():
            out[r] = out.get(r, 0.0) + b.repeat * c
    return out


def build_timeline(
    model: ModelSpec,
    chip: ChipConfig,
    prompt_len: int,
    decode_tokens: int,
    layers: int | None = None,
    pm: PerfModel | None = None,
) -> Timeline:
    from romsim.perf.memory import embed_sram_bytes, lora_bytes
    from romsim.perf.model import PerfModel

    pm = pm or PerfModel(model, chip)
    phases = build_phases(pm, prompt_len, decode_tokens, layers)
    n = count_events(phases)
    if n > MAX_EVENTS:
        raise RomsimInputError(
            "--prompt-len/--decode-tokens/--layers",
            f"{prompt_len}/{decode_tokens}/{layers or 'all'}",
            f"would write {n} trace events (at most {MAX_EVENTS}); expand fewer layers "
            "(--layers 1) or trace a shorter run",
        )
    L = model.n_layers
    tl = Timeline(
        model=model.name,
        chip=chip.name,
        clock_hz=float(chip.clock_hz),
        prompt_len=prompt_len,
        decode_tokens=decode_tokens,
        layers_expanded=L if layers is None else max(1, min(layers, L)),
        n_layers=L,
        phases=phases,
    )
    base = {
        "lora_bytes": float(lora_bytes(model, chip)),
        "embed_table_bytes": float(embed_sram_bytes(model, chip)),
    }
    return lay_out(tl, base)


# ---------------------------------------------------------------------------------- Chrome JSON
def _track_names() -> dict[str, tuple[int, str]]:
    from romsim.perf.ops import RESOURCES

    out = {"phase": (TID_PHASE, "phase"), "layer": (TID_LAYER, "layer")}
    for i, r in enumerate(RESOURCES):
        out[r] = (TID_RESOURCE0 + i, RESOURCE_NAMES.get(r, r))
    out[LATENCY] = (TID_LATENCY, "fixed latency")
    return out


def chrome_trace(tl: Timeline) -> dict[str, Any]:
    """The Chrome Trace Event Format object (JSON object form)."""
    us = 1e6 / tl.clock_hz
    names = _track_names()
    ev: list[dict[str, Any]] = [
        {
            "ph": "M",
            "pid": PID,
            "tid": 0,
            "name": "process_name",
            "args": {"name": f"romsim: {tl.model} on {tl.chip}"},
        },
        {"ph": "M", "pid": PID, "tid": 0, "name": "process_sort_index", "args": {"sort_index": 0}},
    ]
    for track in tl.tracks():
        tid, label = names[track]
        ev.append(
            {"ph": "M", "pid": PID, "tid": tid, "name": "thread_name", "args": {"name": label}}
        )
        ev.append(
            {"ph": "M", "pid": PID, "tid": tid, "name": "thread_sort_index",
             "args": {"sort_index": tid}}
        )  # fmt: skip
    for s in tl.spans:
        ev.append(
            {
                "ph": "X",
                "pid": PID,
                "tid": names[s.track][0],
                "name": s.name,
                "cat": s.track,
                "ts": s.start * us,
                "dur": s.dur * us,
                "args": s.args,
            }
        )
    for c in tl.samples:
        ev.append(
            {"ph": "C", "pid": PID, "tid": 0, "name": c.counter, "ts": c.t * us, "args": c.values}
        )
    return {"traceEvents": ev, "displayTimeUnit": "ns", "otherData": tl.summary()}


# ----------------------------------------------------------------------------- Perfetto protobuf
def perfetto_available() -> bool:
    try:
        import perfetto.trace_builder.proto_builder  # noqa: F401
    except ImportError:
        return False
    return True


def _annotate(msg: Any, key: str, value: Any) -> None:
    """Fill a DebugAnnotation (or a nested dict entry) with ``key = value``."""
    msg.name = key
    _set_value(msg, value)


def _set_value(msg: Any, value: Any) -> None:
    if value is None:
        msg.string_value = "null"
    elif isinstance(value, bool):
        msg.bool_value = value
    elif isinstance(value, int):
        msg.int_value = value
    elif isinstance(value, float):
        msg.double_value = value
    elif isinstance(value, dict):
        for k, v in value.items():
            _annotate(msg.dict_entries.add(), str(k), v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _set_value(msg.array_values.add(), v)
    else:
        msg.string_value = str(value)


def perfetto_trace(tl: Timeline) -> bytes:
    """The same spans and counters as Perfetto TrackEvent packets (timestamps in ns)."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import (
        TracePacket,
        TrackDescriptor,
        TrackEvent,
    )
    from perfetto.trace_builder.proto_builder import TraceProtoBuilder

    seq = 1
    ns = 1e9 / tl.clock_hz
    names = _track_names()
    b = TraceProtoBuilder()
    proc_uuid = 1
    p = b.add_packet()
    p.trusted_packet_sequence_id = seq
    p.sequence_flags = TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    td = p.track_descriptor
    td.uuid = proc_uuid
    td.process.pid = PID
    td.process.process_name = f"romsim: {tl.model} on {tl.chip}"
    td.child_ordering = TrackDescriptor.EXPLICIT
    uuids: dict[str, int] = {}
    rank = 0
    for track in tl.tracks():
        tid, label = names[track]
        uuids[track] = 100 + tid
        p = b.add_packet()
        p.trusted_packet_sequence_id = seq
        td = p.track_descriptor
        td.uuid = uuids[track]
        td.parent_uuid = proc_uuid
        td.name = label
        td.sibling_order_rank = rank
        rank += 1
    units = {COUNTER_SRAM: "bytes", COUNTER_POWER: "W", COUNTER_ENERGY: "J"}
    counter_uuid: dict[tuple[str, str], int] = {}
    for c in tl.samples:
        for k in c.values:
            if (c.counter, k) not in counter_uuid:
                u = 1000 + len(counter_uuid)
                counter_uuid[(c.counter, k)] = u
                p = b.add_packet()
                p.trusted_packet_sequence_id = seq
                td = p.track_descriptor
                td.uuid = u
                td.parent_uuid = proc_uuid
                td.name = c.counter if k in ("W", "J") else f"{c.counter}: {k}"
                td.counter.unit_name = units[c.counter]
                td.sibling_order_rank = rank
                rank += 1

    # per track, BEGIN/END in time order (a track's spans never overlap); a stable sort by time
    # then keeps every END before the next BEGIN at the same nanosecond
    by_track: dict[str, list[tuple[int, int, Any]]] = {}
    for s in tl.spans:  # appended in time order on every track
        items = by_track.setdefault(s.track, [])
        items.append((round(s.start * ns), 0, s))
        items.append((round((s.start + s.dur) * ns), 1, s))
    ordered = [it for items in by_track.values() for it in items]
    ordered += [(round(c.t * ns), 2, c) for c in tl.samples]
    ordered.sort(key=lambda it: it[0])
    for t, kind, obj in ordered:
        if kind == 2:
            for k, v in obj.values.items():
                p = b.add_packet()
                p.trusted_packet_sequence_id = seq
                p.timestamp = t
                p.track_event.type = TrackEvent.TYPE_COUNTER
                p.track_event.track_uuid = counter_uuid[(obj.counter, k)]
                p.track_event.double_counter_value = float(v)
            continue
        p = b.add_packet()
        p.trusted_packet_sequence_id = seq
        p.timestamp = t
        te = p.track_event
        te.track_uuid = uuids[obj.track]
        if kind == 0:
            te.type = TrackEvent.TYPE_SLICE_BEGIN
            te.name = obj.name
            te.categories.append(obj.track)
            for k, v in obj.args.items():
                _annotate(te.debug_annotations.add(), k, v)
        else:
            te.type = TrackEvent.TYPE_SLICE_END
    return b.serialize()


# ------------------------------------------------------------------------------------------ PNG
def render_png(tl: Timeline, path: Path) -> None:
    """A Gantt chart of the first layer of the prefill and of the first decode token: one row
    per resource, a bar per stage (the bounding stage outlined, with the op's full duration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from romsim.perf.ops import RESOURCES

    phases = [p for p in tl.phases if p.blocks and p.blocks[0].layer == 0][:2]
    fig, axes = plt.subplots(len(phases), 1, figsize=(12, 2.2 + 2.2 * len(phases)), squeeze=False)
    us = 1e6 / tl.clock_hz
    rows = [
        r for r in RESOURCES if any(r in o.stage_cycles for p in phases for o in p.blocks[0].ops)
    ]
    cmap = plt.get_cmap("tab20")
    for ax, p in zip(axes[:, 0], phases, strict=True):
        layer = p.blocks[0]
        t = 0.0
        for i, o in enumerate(layer.ops):
            color = cmap(i % 20)
            for r, c in o.stage_cycles.items():
                y = rows.index(r)
                full = o.cycles if r == o.bound_by else c
                ax.barh(y, full * us, left=t * us, color=color,
                        edgecolor="black" if r == o.bound_by else "none", linewidth=0.6)  # fmt: skip
            ax.text((t + o.cycles / 2) * us, len(rows) - 0.3, o.name, rotation=90, fontsize=6,
                    ha="center", va="top")  # fmt: skip
            t += o.cycles
        ax.set_yticks(range(len(rows)), [RESOURCE_NAMES[r] for r in rows])
        ax.set_ylim(-0.6, len(rows) + 1.6)
        ax.invert_yaxis()
        ax.set_xlabel("µs from the start of the layer")
        ax.set_title(f"{tl.model} on {tl.chip}: {p.name}, layer 0 ({t * us:.3g} µs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ------------------------------------------------------------------------------------ the command
def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_paths(out: str | None, fmt: str) -> dict[str, Path]:
    """``json`` and/or ``perfetto`` output files: ``--out`` for the one format asked, and for
    ``both`` the protobuf beside the JSON with the suffix ``.perfetto-trace``."""
    if fmt == "json":
        return {"json": Path(out or "trace.json")}
    if fmt == "perfetto":
        return {"perfetto": Path(out or "trace.perfetto-trace")}
    j = Path(out or "trace.json")
    return {"json": j, "perfetto": j.with_suffix(".perfetto-trace")}


def run(args: argparse.Namespace) -> int:
    """``romsim trace``: check the outputs, build the timeline, write the files."""
    from romsim import jsonout
    from romsim.cli import _check_context, _load_design
    from romsim.paths import check_output_file, write_text_atomic

    paths = output_paths(args.out, args.format)
    if "perfetto" in paths and not perfetto_available():
        raise RomsimInputError(
            "--format", args.format, "the protobuf needs the perfetto package "
            "(pip install 'romsim[explore]'); --format json needs nothing"
        )  # fmt: skip
    if len(set(paths.values())) < len(paths):
        raise RomsimInputError("--out", args.out, "the JSON and the protobuf would be one file")
    for p in paths.values():
        check_output_file(p, "--out")
    png = Path(args.png) if args.png else None
    if png is not None:
        check_output_file(png, "--png")
    model, chip = _load_design(args)
    _check_context(model, prompt_len=args.prompt_len, decode_tokens=args.decode_tokens)
    from romsim.perf.model import PerfModel

    pm = PerfModel(model, chip)
    if not args.allow_unfit:
        from romsim.estimate import require_rom_fit

        require_rom_fit(model, chip, pm.mapping)
    tl = build_timeline(model, chip, args.prompt_len, args.decode_tokens, args.layers, pm)
    written: list[str] = []
    if "json" in paths:
        obj = chrome_trace(tl)
        write_text_atomic(paths["json"], jsonout.dumps(obj, separators=(",", ":")))
        written.append(f"{paths['json']} ({len(obj['traceEvents'])} events)")
    if "perfetto" in paths:
        _write_bytes_atomic(paths["perfetto"], perfetto_trace(tl))
        written.append(f"{paths['perfetto']}")
    if png is not None:
        render_png(tl, png)
        written.append(str(png))
    s = tl.summary()
    print(
        f"wrote {', '.join(written)}: {model.name} on {chip.name}, prefill {args.prompt_len} "
        f"tokens ({s['ttft_s'] * 1e3:.4g} ms) + {args.decode_tokens} decode tokens "
        f"({s['decode_s'] * 1e3:.4g} ms), {s['total_energy_j'] * 1e3:.4g} mJ, "
        f"{tl.layers_expanded} of {tl.n_layers} layers expanded; open in https://ui.perfetto.dev"
    )
    return 0
