"""Bad FL input is one line, fast: config values, paths, checkpoints and finished run folders
are refused before Ray, torch or the model start (no Flower run in this file)."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from romsim.errors import RomsimInputError
from romsim.fl.config import fl_config_from_dict, load_fl_config

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "configs" / "fl-ci.toml"


def _ci_dict() -> dict:
    return load_fl_config(CI).to_dict()


def _cfg(**changes):
    """The CI config with ``section.key = value`` changes (``faults`` replaces the section)."""
    d = _ci_dict()
    for k, v in changes.items():
        sec, _, key = k.partition(".")
        if key:
            d[sec][key] = v
        else:
            d[sec] = v
    return fl_config_from_dict(d, source="test")


# ------------------------------------------------------------------------------ config values
BAD_VALUES = [
    ("train.lr", math.inf),
    ("train.lr", math.nan),
    ("train.lr", -1e-3),
    ("train.lr", 0.0),
    ("train.lr", 10.0),
    ("train.weight_decay", math.nan),
    ("train.weight_decay", -0.1),
    ("train.weight_decay", 1.0),
    ("train.local_epochs", math.inf),
    ("train.local_epochs", -1.0),
    ("train.local_epochs", 1e9),
    ("train.local_steps", 10**9),
    ("train.batch", 10**6),
    ("train.seq_len", 10**7),
    ("train.eval_batch", 0),
    ("train.max_grad_norm", math.inf),
    ("run.seed", -1),
    ("run.seed", 2**70),
    ("run.rounds", 0),
    ("run.rounds", 10**9),
    ("data.seed", -5),
    ("data.n_train", 2),  # 3 clients
    ("data.n_train", 10**12),
    ("data.eval_examples", 17),  # n_test = 16
    ("data.alpha", math.nan),
    ("lora.targets", []),
    ("lora.targets", ["q", "q"]),
    ("lora.targets", ["qkv"]),
    ("lora.alpha", math.inf),
    ("simulation.num_cpus", -1),
    ("simulation.num_cpus", 0),
    ("simulation.client_cpus", math.nan),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=lambda x: str(x))
def test_bad_config_value_names_its_field(field, value):
    with pytest.raises(RomsimInputError) as ei:
        _cfg(**{field: value})
    assert ei.value.field.startswith(field), ei.value  # lora.targets.0 for one bad item
    assert ei.value.source == "test"


BAD_CROSS = [
    ("faults", [{"cid": 3, "kind": "nan"}], "faults.0.cid"),
    ("faults", [{"cid": 0}, {"cid": 7}], "faults.1.cid"),
    ("faults", [{"cid": 0, "round": 9}], "faults.0.round"),
    ("devices", [], "devices.count"),
    ("devices", [{"name": "a", "count": 0}], "devices.count"),
    ("devices", [{"name": "a"}, {"name": "a"}], "devices.name"),
]


@pytest.mark.parametrize(("section", "value", "field"), BAD_CROSS)
def test_cross_section_rules_name_the_field(section, value, field):
    with pytest.raises(RomsimInputError) as ei:
        _cfg(**{section: value})
    assert ei.value.field == field


def test_good_configs_still_load():
    assert _cfg().n_clients == 3
    assert _cfg(faults=[{"cid": 2, "round": 2}]).faults[0].cid == 2
    assert _cfg(**{"train.local_epochs": 1.5, "simulation.num_cpus": 2}).train.lr == 1e-3
    load_fl_config(ROOT / "configs" / "fl-default.toml")


# ------------------------------------------------------------------------------ CLI, one line
def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("romsim: error:"), err
    return err


def _toml(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "fl.toml"
    p.write_text(CI.read_text() + "\n" + extra)
    return p


CLI_CASES = [
    ("[[faults]]\ncid = 5\n", [], "faults.0.cid = 5"),
    ("", ["--rounds", "-1"], "--rounds = -1"),
    ("", ["--rounds", "100000000"], "--rounds = 100000000"),
    ("", ["--strategy", "nope"], "--strategy = 'nope'"),
]


@pytest.mark.parametrize(("extra", "argv", "needle"), CLI_CASES)
def test_cli_bad_value_is_one_line_exit_2(tmp_path, capsys, extra, argv, needle):
    from romsim.cli import main

    cfg = _toml(tmp_path, extra)
    rc = main(["fl", "run", "--config", str(cfg), "--out", str(tmp_path / "o"), *argv])
    assert rc == 2
    assert needle in _one_line(capsys)
    assert not (tmp_path / "o").exists()


def test_cli_toml_edits_are_one_line(tmp_path, capsys):
    from romsim.cli import main

    cases = {
        "train": "weight_decay = nan",
        "simulation": "num_cpus = -1",
        "lora": "targets = []",
        "data": "seed = -1",
    }
    for sec, line in cases.items():
        text = CI.read_text().replace(f"[{sec}]\n", f"[{sec}]\n{line}\n", 1)
        p = tmp_path / f"{sec}.toml"
        p.write_text(text)
        assert main(["fl", "run", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
        assert f"{sec}.{line.split(' = ')[0]} = " in _one_line(capsys)


def _bad_config_paths(tmp_path: Path) -> dict[str, Path]:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x00\x01\x02[run]\n")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[run]\nname = "caf\xe9"\n'.encode("latin-1"))
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[run\n")
    return {
        "no such file": tmp_path / "missing.toml",
        "is a directory": tmp_path,
        "binary": binary,
        "not UTF-8": latin1,
        "not valid TOML": bad_toml,
    }


def test_bad_config_file_is_one_line(tmp_path, capsys):
    from romsim.cli import main

    for needle, path in _bad_config_paths(tmp_path).items():
        assert main(["fl", "run", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
        err = _one_line(capsys)
        assert "--config" in err and needle in err, err


def _bad_out_paths(tmp_path: Path) -> dict[str, Path]:
    f = tmp_path / "file"
    f.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return {"is a file": f, "which is a file": f / "sub" / "out", "not writable": locked / "o"}


def test_bad_out_is_one_line_before_anything_starts(tmp_path, capsys):
    import os

    from romsim.cli import main

    cases = _bad_out_paths(tmp_path)
    if os.geteuid() == 0:  # root writes anywhere
        cases.pop("not writable")
    for needle, out in cases.items():
        assert main(["fl", "run", "--config", str(CI), "--out", str(out)]) == 2
        err = _one_line(capsys)
        assert "--out" in err and needle in err, err


# ------------------------------------------------------------------------------ run folders
@pytest.mark.parametrize("name", ["metrics.json", "metrics.csv", "adapter"])
def test_finished_run_is_not_overwritten_without_checkpoint(tmp_path, name):
    from romsim.fl.runner import preflight

    out = tmp_path / "run"
    out.mkdir()
    target = out / name
    if name == "adapter":
        target.mkdir()
        (target / "adapter_model.safetensors").write_bytes(b"keep me")
    else:
        target.write_text("keep me")
    for resume in (False, True):
        with pytest.raises(RomsimInputError) as ei:
            preflight(_cfg(), out, resume=resume)
        assert name in ei.value.rule
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing written


def test_fresh_and_empty_folders_pass_preflight(tmp_path):
    from romsim.fl.runner import preflight

    assert preflight(_cfg(), tmp_path / "new", resume=False) is None
    assert preflight(_cfg(), tmp_path / "new", resume=True) is None  # nothing to resume yet
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------ checkpoints
class _Planner:
    """Stand-in for the strategy planner (only its checkpoint state is written)."""

    def __init__(self, arrays: dict[str, np.ndarray] | None = None):
        self.arrays = arrays or {}

    def state_arrays(self) -> dict[str, np.ndarray]:
        return self.arrays


def _write_checkpoint(out: Path, cfg, rnd: int = 1, glob=None, planner=None) -> Path:
    """A checkpoint after round ``rnd`` written by the runner's own writer."""
    from romsim.fl.runner import ServerLoop, config_digest, expected_adapter_shapes
    from romsim.fl.train import init_adapter

    glob = init_adapter(expected_adapter_shapes(cfg), cfg.run.seed) if glob is None else glob
    row = {"round": 0, "accuracy": 0.25, "eval_loss": 1.0, "train_loss": float("nan"),
           "sim_time_s": 0.0, "energy_j": 0.0}  # fmt: skip
    rows = [dict(row, round=i) for i in range(rnd + 1)]
    details = [{"round": i, "clients": [], "dropped": []} for i in range(1, rnd + 1)]
    ck = out / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    loop = ServerLoop(None, cfg, str(out))
    loop._checkpoint(ck, rnd, glob, planner or _Planner(), rows, details, config_digest(cfg))
    return ck


def test_good_checkpoint_resumes_with_nan_back_from_null(tmp_path):
    from romsim.fl.runner import expected_adapter_shapes, preflight

    cfg = _cfg()
    stagg = {f"stagg/{k}": np.zeros(s, np.float32) for k, s in expected_adapter_shapes(cfg).items()}
    ck = _write_checkpoint(tmp_path, cfg, planner=_Planner(stagg))
    text = (ck / "state.json").read_text()
    assert "NaN" not in text and json.loads(text)["rows"][0]["train_loss"] is None
    metrics = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in metrics
    st, glob, planner = preflight(cfg, tmp_path, resume=True)
    assert st["round"] == 1 and math.isnan(st["rows"][0]["train_loss"])
    assert set(glob) == set(expected_adapter_shapes(cfg)) and len(planner) == len(stagg)


def _corrupt_round(ck: Path, cfg) -> None:
    st = json.loads((ck / "state.json").read_text())
    st["round"] = cfg.run.rounds + 1
    (ck / "state.json").write_text(json.dumps(st))


def _negative_round(ck: Path, cfg) -> None:
    st = json.loads((ck / "state.json").read_text())
    st["round"] = -1
    (ck / "state.json").write_text(json.dumps(st))


def _fewer_rows(ck: Path, cfg) -> None:
    st = json.loads((ck / "state.json").read_text())
    st["rows"] = st["rows"][:1]
    (ck / "state.json").write_text(json.dumps(st))


def _escape_file(ck: Path, cfg) -> None:
    st = json.loads((ck / "state.json").read_text())
    st["file"] = "../../etc/passwd"
    (ck / "state.json").write_text(json.dumps(st))


def _truncate_state(ck: Path, cfg) -> None:
    raw = (ck / "state.json").read_bytes()
    (ck / "state.json").write_bytes(raw[: len(raw) // 2])


def _binary_state(ck: Path, cfg) -> None:
    (ck / "state.json").write_bytes(b"\xff\xfe\x00garbage")


def _state_not_object(ck: Path, cfg) -> None:
    (ck / "state.json").write_text("[1, 2, 3]")


def _other_config(ck: Path, cfg) -> None:
    st = json.loads((ck / "state.json").read_text())
    st["config_digest"] = "0" * 16
    (ck / "state.json").write_text(json.dumps(st))


def _npz(ck: Path) -> Path:
    return next(ck.glob("round-*.npz"))


def _rewrite_npz(ck: Path, change) -> None:
    with np.load(_npz(ck)) as z:
        arrs = {k: z[k] for k in z.files}
    change(arrs)
    np.savez(_npz(ck), **arrs)


def _nan_tensor(ck: Path, cfg) -> None:
    def change(a):
        a["global/0.q.A"] = a["global/0.q.A"].copy()
        a["global/0.q.A"][0, 0] = np.nan

    _rewrite_npz(ck, change)


def _inf_tensor(ck: Path, cfg) -> None:
    _rewrite_npz(ck, lambda a: a.__setitem__("global/1.down.B", a["global/1.down.B"] + np.inf))


def _wrong_shape(ck: Path, cfg) -> None:
    _rewrite_npz(ck, lambda a: a.__setitem__("global/0.k.B", np.zeros((3, 3), np.float32)))


def _missing_key(ck: Path, cfg) -> None:
    _rewrite_npz(ck, lambda a: a.pop("global/2.v.A"))


def _int_tensor(ck: Path, cfg) -> None:
    _rewrite_npz(ck, lambda a: a.__setitem__("global/0.q.B", a["global/0.q.B"].astype(np.int32)))


def _nan_planner_state(ck: Path, cfg) -> None:
    _rewrite_npz(ck, lambda a: a.__setitem__("planner/stagg/0.q.A", a["global/0.q.A"] * np.nan))


def _truncate_npz(ck: Path, cfg) -> None:
    raw = _npz(ck).read_bytes()
    _npz(ck).write_bytes(raw[: len(raw) // 2])


def _garbage_npz(ck: Path, cfg) -> None:
    _npz(ck).write_bytes(b"not a zip file at all")


def _bad_member_npz(ck: Path, cfg) -> None:
    with zipfile.ZipFile(_npz(ck), "w") as z:
        z.writestr("global/0.q.A.npy", b"\x93NUMPY broken header")


def _missing_npz(ck: Path, cfg) -> None:
    _npz(ck).unlink()


CORRUPTIONS = [
    (_corrupt_round, "state.json", "round"),
    (_negative_round, "state.json", "round"),
    (_fewer_rows, "state.json", "rows"),
    (_escape_file, "state.json", "file"),
    (_truncate_state, "state.json", "file"),
    (_binary_state, "state.json", "file"),
    (_state_not_object, "state.json", "file"),
    (_other_config, "state.json", "config_digest"),
    (_nan_tensor, ".npz", "global/0.q.A"),
    (_inf_tensor, ".npz", "global/1.down.B"),
    (_wrong_shape, ".npz", "global/0.k.B"),
    (_missing_key, ".npz", "global/*"),
    (_int_tensor, ".npz", "global/0.q.B"),
    (_nan_planner_state, ".npz", "planner/stagg/0.q.A"),
    (_truncate_npz, ".npz", "file"),
    (_garbage_npz, ".npz", "file"),
    (_bad_member_npz, ".npz", "file"),
    (_missing_npz, ".npz", "file"),
]


@pytest.mark.parametrize(
    ("corrupt", "where", "field"), CORRUPTIONS, ids=lambda x: getattr(x, "__name__", str(x))
)
def test_corrupt_checkpoint_is_refused_naming_the_file(tmp_path, corrupt, where, field):
    from romsim.fl.runner import preflight

    cfg = _cfg()
    ck = _write_checkpoint(tmp_path, cfg, rnd=1)
    corrupt(ck, cfg)
    with pytest.raises(RomsimInputError) as ei:
        preflight(cfg, tmp_path, resume=True)
    assert ei.value.source is not None and ei.value.source.endswith(where), ei.value
    assert ei.value.field == field, ei.value
    assert "\n" not in str(ei.value)


def test_corrupt_checkpoint_is_one_line_from_the_cli_before_ray(tmp_path, capsys, monkeypatch):
    """``romsim fl run --resume`` refuses the checkpoint before Flower's simulation starts."""
    import flwr.simulation

    from romsim.cli import main

    def no_ray(*a, **k):
        raise AssertionError("run_simulation started on a corrupt checkpoint")

    monkeypatch.setattr(flwr.simulation, "run_simulation", no_ray)
    ck = _write_checkpoint(tmp_path, _cfg(), rnd=1)
    _nan_tensor(ck, None)
    assert main(["fl", "run", "--config", str(CI), "--out", str(tmp_path), "--resume"]) == 2
    err = _one_line(capsys)
    assert "round-0001.npz" in err and "NaN" in err


def test_checkpoint_without_resume_is_not_overwritten(tmp_path):
    from romsim.fl.runner import preflight

    _write_checkpoint(tmp_path, _cfg(), rnd=1)
    with pytest.raises(RomsimInputError) as ei:
        preflight(_cfg(), tmp_path, resume=False)
    assert "--resume" in ei.value.rule


def test_spec_shapes_are_the_torch_models_shapes():
    """The torch-free shape check before Ray agrees with the loaded model's adapter."""
    pytest.importorskip("peft")
    from romsim.fl.runner import expected_adapter_shapes
    from romsim.fl.train import adapter_shapes, load_bundle

    cfg = _cfg(**{"lora.targets": ["q", "v", "down"]})
    bundle = load_bundle(cfg.model, cfg.lora, 1)
    assert expected_adapter_shapes(cfg) == adapter_shapes(bundle)


# ------------------------------------------------------------------------------ noise filters
def test_quiet_filters_only_the_known_third_party_messages():
    import logging
    import warnings

    from romsim.fl.quiet import _DropMessages, quiet_third_party

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("once", category=DeprecationWarning)  # what flwr installs
        quiet_third_party()
        warnings.warn_explicit(
            "`torch.jit.script_method` is deprecated. Please switch to `torch.compile`.",
            DeprecationWarning, "_script.py", 1, module="torch.jit._script",
        )  # fmt: skip
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.",
                      FutureWarning, stacklevel=1)  # fmt: skip
        warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)
        warnings.warn("a FutureWarning of our own", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == [
        "something else is deprecated",
        "a FutureWarning of our own",
    ]
    flwr = logging.getLogger("flwr")
    drop = [f for f in flwr.filters if isinstance(f, _DropMessages)]
    assert len(drop) == 1  # installed once, however often it is called

    def rec(msg, *args):
        return logging.LogRecord("flwr", logging.WARNING, "x", 1, msg, args, None)

    banner = "DEPRECATED FEATURE: %s"
    assert not drop[0].filter(rec(banner, "The `run_simulation` function is deprecated and ..."))
    assert drop[0].filter(rec(banner, "some other Flower feature"))
