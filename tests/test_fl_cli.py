"""The ``fl`` command: parser wiring and one-line errors (no run)."""

from __future__ import annotations

from romsim.fl.__main__ import main


def test_add_parser_builds_fl_run_without_heavy_imports():
    import argparse

    from romsim.fl.cli import add_parser

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(["fl", "run", "--config", "x.toml", "--resume", "--out", "o"])
    assert a.func.__name__ == "cmd_fl_run" and a.resume and a.out == "o"


def test_bad_config_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "fl.toml"
    bad.write_text("[train]\nbatch = 0\n")
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.batch = 0" in err
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    small = tmp_path / "small.toml"
    small.write_text(
        '[[devices]]\nname = "x"\noverrides = { "sram.lora_kv_bytes" = 1000, "sram.act_bytes" = 0 }\n'
    )
    assert main(["run", "--config", str(small), "--out", str(tmp_path / "o")]) == 2
    assert "devices.x.sram" in capsys.readouterr().err
    # an output folder that holds a finished run's checkpoint is not overwritten
    (tmp_path / "done" / "checkpoint").mkdir(parents=True)
    (tmp_path / "done" / "checkpoint" / "state.json").write_text("{}")
    assert main(["run", "--out", str(tmp_path / "done")]) == 2
    assert "--resume" in capsys.readouterr().err


def test_local_epochs_set_steps_from_each_clients_data():
    from romsim.fl.config import TrainSection

    assert TrainSection(local_steps=5).steps_for(1000) == 5
    t = TrainSection(local_epochs=1.5, batch=4)
    assert [t.steps_for(n) for n in (1, 8, 10, 400)] == [1, 3, 4, 150]


def test_built_in_defaults_are_the_documented_default_run():
    from pathlib import Path

    from romsim.fl.config import FLConfig, load_fl_config

    toml = Path(__file__).resolve().parents[1] / "configs" / "fl-default.toml"
    assert FLConfig().to_dict() == load_fl_config(toml).to_dict()
