"""``romsim trace``: the Chrome JSON timeline and the Perfetto protobuf agree with the model."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from romsim.cli import main
from romsim.config import load_chip
from romsim.modelspec import load_model
from romsim.perf.model import PerfModel
from romsim.perf.ops import RESOURCES
from romsim.trace import build_timeline, chrome_trace, perfetto_available

REL = 1e-9


def _design(preset: str = "roma-3b-w4", model: str | None = None):
    chip = load_chip(preset)
    m = load_model(model or chip.model)
    return m, chip, PerfModel(m, chip)


def _expected_s(pm: PerfModel, prompt_len: int, decode_tokens: int) -> float:
    ctx = prompt_len + np.arange(decode_tokens, dtype=np.float64)
    cycles = pm.prefill_cycles(prompt_len) + float(pm.decode_cycles(ctx).sum())
    return cycles / pm.chip.clock_hz


def _trace_cli(tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "t.json"
    code = main(["trace", "--out", str(out), *extra])
    return code, json.loads(out.read_text()) if out.exists() else {}


def _check_chrome(obj: dict, expected_end_s: float, expected_energy_j: float) -> None:
    ev = obj["traceEvents"]
    assert obj["displayTimeUnit"] == "ns"
    xs = [e for e in ev if e["ph"] == "X"]
    meta = [e for e in ev if e["ph"] == "M"]
    assert xs and meta
    named = {e["tid"] for e in meta if e["name"] == "thread_name"}
    assert any(e["name"] == "process_name" for e in meta)
    tracks: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for e in xs:
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert e["tid"] in named
        assert e["ts"] >= 0 and e["dur"] >= 0
        tracks[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for spans in tracks.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end * (1 - 1e-12), "events on one track overlap"
    last_end_us = max(e["ts"] + e["dur"] for e in xs)
    assert last_end_us / 1e6 == pytest.approx(expected_end_s, rel=REL)
    # every op once, on the track of its bounding stage, carrying its energy
    ops = [e for e in xs if "energy_j" in e["args"] and "bound_by" in e["args"]]
    assert ops
    op_energy = sum(e["args"]["energy_j"]["total"] for e in ops)
    energy = [e for e in ev if e["ph"] == "C" and e["name"] == "energy"]
    final = max(energy, key=lambda e: e["ts"])["args"]["J"]
    assert final == pytest.approx(expected_energy_j, rel=REL)
    layers = obj["otherData"]["layers_expanded"]
    if layers == obj["otherData"]["n_layers"]:
        assert op_energy == pytest.approx(final, rel=REL)
    cum = [e["args"]["J"] for e in sorted(energy, key=lambda e: e["ts"])]
    assert all(b >= a for a, b in zip(cum, cum[1:], strict=False))


def test_timeline_matches_perf_model():
    m, chip, pm = _design()
    tl = build_timeline(m, chip, 32, 4, pm=pm)
    assert tl.total_cycles / chip.clock_hz == pytest.approx(_expected_s(pm, 32, 4), rel=REL)
    prefill = tl.phases[0]
    assert prefill.cycles == pytest.approx(pm.prefill_cycles(32), rel=REL)
    for k, ph in enumerate(tl.phases[1:]):
        assert ph.cycles == pytest.approx(float(pm.decode_cycles(32 + k)[0]), rel=REL)
    # energy: per-op dynamic energy sums to the model's action counts, priced
    from romsim.area.energy import dynamic_energy_j

    dyn = sum(o.dynamic_j * b.repeat for b in tl.phases[1].blocks for o in b.ops)
    ref = sum(dynamic_energy_j(chip, pm.decode_events(32.0)).values())
    assert dyn == pytest.approx(ref, rel=1e-9)


def test_cli_json(tmp_path, capsys):
    m, chip, pm = _design()
    code, obj = _trace_cli(tmp_path)
    assert code == 0
    assert "ui.perfetto.dev" in capsys.readouterr().out
    tl = build_timeline(m, chip, 32, 4, pm=pm)
    _check_chrome(obj, _expected_s(pm, 32, 4), tl.total_energy_j)
    ev = obj["traceEvents"]
    xs = [e for e in ev if e["ph"] == "X"]
    names = {e["name"] for e in xs}
    assert {"qkv", "attn_score", "softmax", "kv_write", "gate_up", "down"} <= names
    assert not any(n.startswith("lora_") for n in names)  # merged into the matmuls
    thread_names = {e["args"]["name"] for e in ev if e["name"] == "thread_name"}
    assert {"phase", "layer", "ROM reads", "MACs", "H-Unit", "vector"} <= thread_names
    phases = [e["name"] for e in xs if e["cat"] == "phase"]
    assert phases == ["prefill"] + [f"decode token {k}" for k in range(4)]
    # a matmul: the full op on its bounding resource, its other stages shorter, same start
    qkv = [e for e in xs if e["name"] == "qkv" and e["args"]["layer"] == 0]
    qkv = [e for e in qkv if e["args"]["phase"] == "decode token 0"]
    full = [e for e in qkv if "bound_by" in e["args"] and "stage" not in e["args"]]
    assert len(full) == 1 and len(qkv) > 1
    a = full[0]["args"]
    assert a["bound_by"] in RESOURCES
    assert a["cycles"] == pytest.approx(a["latency_cycles"] + max(a["stage_cycles"].values()))
    assert set(a["actions"]) == set(a["energy_j"]["by_action"])
    assert all(e["ts"] == full[0]["ts"] and e["dur"] <= full[0]["dur"] for e in qkv)
    # SRAM counter: LoRA constant, KV cache grows by one token per decode step
    sram = sorted((e for e in ev if e["ph"] == "C" and e["name"] == "SRAM in use"),
                  key=lambda e: e["ts"])  # fmt: skip
    kv = [e["args"]["kv_cache_bytes"] for e in sram]
    from romsim.perf.memory import kv_bytes_per_token, lora_bytes

    assert kv[0] == 0 and all(b >= a for a, b in zip(kv, kv[1:], strict=False))
    per_tok = kv_bytes_per_token(m, chip)
    assert kv[-1] == pytest.approx((32 + 4 * chip.operating.batch) * per_tok, rel=1e-9)
    assert all(e["args"]["lora_bytes"] == lora_bytes(m, chip) for e in sram)
    power = [e["args"]["W"] for e in ev if e["ph"] == "C" and e["name"] == "power"]
    assert all(p >= 0 for p in power) and max(p for p in power) > 0


def test_layers_collapse(tmp_path):
    m, chip, pm = _design()
    code, obj = _trace_cli(tmp_path, "--layers", "2", "--decode-tokens", "3")
    assert code == 0
    tl = build_timeline(m, chip, 32, 3, pm=pm)
    _check_chrome(obj, _expected_s(pm, 32, 3), tl.total_energy_j)
    xs = [e for e in obj["traceEvents"] if e["ph"] == "X"]
    assert {e["args"]["layer"] for e in xs if e["cat"] != "phase"} <= {0, 1, 2, None}
    collapsed = [e for e in xs if e["cat"] == "layer" and e["args"]["layers"] > 1]
    assert len(collapsed) == 4 and all(e["args"]["layers"] == m.n_layers - 2 for e in collapsed)
    _, full = _trace_cli(tmp_path / "full", "--decode-tokens", "3")
    assert len(obj["traceEvents"]) < len(full["traceEvents"]) / 5


def test_chunked_prefill_and_other_model():
    """A prompt longer than the prefill chunk, on a model with an on-chip head and embedding."""
    m, chip, pm = _design("roma-3b-w4", "smollm2-135m")
    chip = chip.with_overrides(**{"sram.act_bytes": 200_000})
    pm = PerfModel(m, chip)
    assert pm.prefill_chunk(40) < 40
    tl = build_timeline(m, chip, 40, 2, layers=1, pm=pm)
    _check_chrome(chrome_trace(tl), _expected_s(pm, 40, 2), tl.total_energy_j)


def test_strict_json(tmp_path):
    code, _ = _trace_cli(tmp_path, "--decode-tokens", "1", "--layers", "1")
    assert code == 0
    text = (tmp_path / "t.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))


@pytest.mark.skipif(not perfetto_available(), reason="the perfetto package is not installed")
def test_perfetto_protobuf(tmp_path):
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

    out = tmp_path / "t.json"
    png = tmp_path / "g.png"
    argv = ["trace", "--format", "both", "--out", str(out), "--layers", "2", "--png", str(png)]
    assert main(argv) == 0
    obj = json.loads(out.read_text())
    assert png.stat().st_size > 1000
    trace = Trace()
    trace.ParseFromString((tmp_path / "t.perfetto-trace").read_bytes())
    packets = list(trace.packet)
    descs = {
        p.track_descriptor.uuid: p.track_descriptor
        for p in packets
        if p.HasField("track_descriptor")
    }
    events = [p for p in packets if p.HasField("track_event")]
    begins = [p for p in events if p.track_event.type == TrackEvent.TYPE_SLICE_BEGIN]
    ends = [p for p in events if p.track_event.type == TrackEvent.TYPE_SLICE_END]
    counters = [p for p in events if p.track_event.type == TrackEvent.TYPE_COUNTER]
    xs = [e for e in obj["traceEvents"] if e["ph"] == "X"]
    cs = [e for e in obj["traceEvents"] if e["ph"] == "C"]
    assert len(begins) == len(ends) == len(xs)
    assert len(counters) == sum(len(e["args"]) for e in cs)
    assert sorted(p.track_event.name for p in begins) == sorted(e["name"] for e in xs)
    # packets in time order; on every track BEGIN and END alternate (no nesting, no overlap)
    ts = [p.timestamp for p in events]
    assert ts == sorted(ts)
    open_on: dict[int, bool] = {}
    for p in events:
        te = p.track_event
        assert te.track_uuid in descs
        if te.type == TrackEvent.TYPE_SLICE_BEGIN:
            assert not open_on.get(te.track_uuid)
            open_on[te.track_uuid] = True
        elif te.type == TrackEvent.TYPE_SLICE_END:
            assert open_on.get(te.track_uuid)
            open_on[te.track_uuid] = False
    m, chip, pm = _design()
    assert max(ts) / 1e9 == pytest.approx(_expected_s(pm, 32, 4), abs=1e-9)
    names = {d.name for d in descs.values()}
    assert {"ROM reads", "H-Unit", "power", "energy"} <= names


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--prompt-len", "0"], "--prompt-len = 0"),
        (["--layers", "x"], "--layers = 'x'"),
        (["--format", "svg"], "invalid choice"),
    ],
)
def test_bad_flags(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["trace", "--out", str(tmp_path / "t.json"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("romsim: error:") and needle in err and err.count("\n") == 1


def test_bad_input(tmp_path, capsys):
    assert main(["trace", "--out", str(tmp_path / "t.json"), "--prompt-len", "200000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("romsim: error:") and "max_position_embeddings" in err
    assert err.count("\n") == 1 and not (tmp_path / "t.json").exists()


def test_bad_output(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["trace", "--out", str(tmp_path / "f" / "t.json")]) == 2
    assert main(["trace", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(e.startswith("romsim: error: --out = ") for e in err)
