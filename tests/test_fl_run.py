"""CI-sized federated runs through Flower's simulation engine (configs/fl-ci.toml: a tiny random
LLaMA, synthetic data, 3 clients, 2 rounds): metrics, PEFT export, resume, faulty clients."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**changes):
    from romsim.fl.config import fl_config_from_dict, load_fl_config

    d = load_fl_config(ROOT / "configs" / "fl-ci.toml").to_dict()
    for k, v in changes.items():
        sec, _, key = k.partition(".")
        if key:
            d[sec][key] = v
        else:
            d[sec] = v
    return fl_config_from_dict(d)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    from romsim.fl.runner import run_fl

    out = tmp_path_factory.mktemp("fl") / "full"
    return out, run_fl(_cfg(), out=str(out), progress=False)


def test_ci_run_writes_metrics_plot_and_peft_adapter(full_run):
    out, res = full_run
    rows = res["rows"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for name in ("metrics.csv", "metrics.json", "metrics.png", "devices.json", "log.txt"):
        assert (out / name).is_file()
    r2 = rows[-1]
    assert r2["clients_ok"] == 3 and r2["clients_dropped"] == 0
    assert r2["round_time_s"] > 0 and r2["energy_j"] > 0 and r2["bytes_up"] > 0
    assert r2["sim_time_s"] == pytest.approx(rows[1]["round_time_s"] + r2["round_time_s"])
    assert rows[2]["eval_loss"] < rows[0]["eval_loss"]  # training moves the held-out loss
    det = json.loads((out / "metrics.json").read_text())["details"][0]
    per = {c["cid"]: c for c in det["clients"]}
    # round time = the slowest client's simulated device time
    assert rows[1]["round_time_s"] == pytest.approx(max(c["device_time_s"] for c in per.values()))
    # the weak devices (2 of 4 layers by SRAM) train fewer layers and upload less
    assert per[0]["trained_layers"] == 4 and per[1]["trained_layers"] == 2
    assert per[1]["bytes_up"] < per[0]["bytes_up"]
    assert all(c["sram_needed_bytes"] <= c["sram_capacity_bytes"] for c in per.values())

    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from romsim.fl.train import tiny_llama_config

    base = LlamaForCausalLM(tiny_llama_config(4))
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    from safetensors.numpy import load_file

    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert len(saved) == 4 * 7 * 2
    sd = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert any(float(torch.abs(v).sum()) > 0 for v in sd.values())  # trained B is not zero


def test_resume_equals_uninterrupted(full_run, tmp_path):
    from romsim.fl.runner import run_fl

    _, full = full_run
    out = tmp_path / "resumed"
    part = run_fl(_cfg(), out=str(out), progress=False, stop_after=1)
    assert part["stopped"] and len(part["rows"]) == 2
    res = run_fl(_cfg(), out=str(out), resume=True, progress=False)
    keys = ("accuracy", "eval_loss", "train_loss", "round_time_s", "energy_j", "bytes_up")
    for a, b in zip(full["rows"], res["rows"], strict=True):
        for k in keys:
            assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], (a["round"], k)


def test_faulty_clients_are_dropped_with_a_reason(tmp_path):
    from romsim.fl.runner import run_fl

    faults = [
        {"cid": 1, "round": 1, "kind": "raise"},
        {"cid": 0, "round": 2, "kind": "nan"},
        {"cid": 2, "round": 2, "kind": "shape"},
    ]
    res = run_fl(_cfg(faults=faults, **{"run.rounds": 3}), out=str(tmp_path), progress=False)
    rows = res["rows"]
    assert [r["clients_dropped"] for r in rows[1:]] == [1, 2, 0]
    assert [r["clients_ok"] for r in rows[1:]] == [2, 1, 3]
    assert all(math.isfinite(r["eval_loss"]) for r in rows)
    det = json.loads((tmp_path / "metrics.json").read_text())["details"]
    reasons = {(d["round"], d["cid"]): d["reason"] for x in det for d in x["dropped"]}
    assert "injected fault" in reasons[(1, 1)]
    assert "NaN" in reasons[(2, 0)]
    assert "shape" in reasons[(2, 2)]
    log = (tmp_path / "log.txt").read_text()
    assert "client 2 dropped" in log and "client 0 dropped" in log
