import json
import subprocess
import sys

import pytest

from romsim.cli import main


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("preset", ["roma-3b-w4", "roma-8b-w2"])
def test_estimate_json(preset, capsys):
    code, out, _ = run(
        ["estimate", "--preset", preset, "--prompt-len", "128", "--gen-len", "128", "--json"],
        capsys,
    )
    assert code == 0
    d = json.loads(out)
    for key in (
        "decode_tokens_per_s",
        "ttft_s",
        "energy_per_token_j",
        "area_mm2",
        "area_breakdown_mm2",
        "rom_bytes",
        "sram_bytes",
        "fits",
        "per_layer",
    ):
        assert key in d
    assert isinstance(d["area_breakdown_mm2"], dict) and isinstance(d["per_layer"], list)
    assert d["fits"] is True


def test_estimate_table(capsys):
    code, out, _ = run(["estimate", "--detail"], capsys)
    assert code == 0 and "decode tokens/s" in out
    assert "energy per token by action" in out and "leakage" in out and "clock_cycles" in out


def test_user_files(tmp_path, capsys):
    cfg = tmp_path / "my.toml"
    cfg.write_text('base = "roma-3b-w4"\nname = "mine"\n[cell]\ncells_per_unit = 64\n')
    code, out, _ = run(
        ["estimate", "--model", "smollm2-135m", "--config", str(cfg), "--json"], capsys
    )
    assert code == 0 and json.loads(out)["chip"] == "mine"


@pytest.mark.parametrize(
    "toml,needle",
    [
        ('base = "roma-3b-w4"\n[cell]\ncells_per_units = 64\n', "cell.cells_per_units"),
        ('base = "roma-3b-w4"\n[sram]\nact_bytes = -5\n', "sram.act_bytes = -5"),
        ('base = "roma-3b-w4"\nquant = "w7g128"\n', "quant"),
        ("[cell\n", "not valid TOML"),
        ('base = "nope"\n', "base = 'nope'"),
    ],
)
def test_bad_config_one_line_exit_2(tmp_path, capsys, toml, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    code, out, err = run(["estimate", "--config", str(cfg)], capsys)
    assert (
        code == 2
        and needle in err
        and len(err.strip().splitlines()) == 1
        and "Traceback" not in err
    )


def test_model_does_not_fit_is_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "small.toml"
    cfg.write_text('base = "roma-3b-w4"\n[rom]\nmacro_rows = 4096\n')
    code, out, err = run(["estimate", "--config", str(cfg)], capsys)
    assert code == 2 and out == ""
    assert err.strip() == (
        "romsim: error: model = 'llama-3.2-3b': at w4g128 needs 1.38 GiB of ROM, the config has "
        "0.75 GiB (rom.macro_rows = 4096, 7532 needed per cell)"
    )
    # --allow-unfit still estimates and reports fits = false
    code, out, err = run(["estimate", "--config", str(cfg), "--allow-unfit", "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["fits"] is False and "needs 1.38 GiB of ROM" in d["fit_problems"][0]


def test_context_too_long_for_sram(capsys):
    args = ["estimate", "--prompt-len", "4000", "--gen-len", "1000", "--strict"]
    code, out, err = run(args, capsys)
    assert code == 2 and "KV cache for 5000 tokens" in out


def test_per_layer_breakdown_names_ops_and_bounds(capsys):
    code, out, _ = run(["estimate", "--json"], capsys)
    layer = json.loads(out)["per_layer"][0]
    ops = {o["op"]: o for o in layer["ops"]}
    for name in ("qkv", "attn_score", "softmax", "attn_value", "o", "gate_up", "down", "rope"):
        assert name in ops
    assert ops["qkv"]["bound_by"] == "rom" and "h_mac" in ops["qkv"]["stage_cycles"]  # LoRA path
    assert abs(sum(o["cycles"] for o in layer["ops"]) - layer["decode_cycles"]) < 1e-6


def test_bad_flag_value(capsys):
    with pytest.raises(SystemExit) as e:
        main(["estimate", "--prompt-len", "0"])
    assert e.value.code == 2
    assert "--prompt-len = 0" in capsys.readouterr().err


def test_missing_model_file(capsys):
    code, _, err = run(["estimate", "--model", "/nonexistent/config.json"], capsys)
    assert code == 2 and "model = '/nonexistent/config.json'" in err


def test_cli_does_not_import_torch():
    code = "import sys, romsim.cli; romsim.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_step_cli(capsys):
    code, out, _ = run(["train-step", "--json", "--batch", "2", "--seq-len", "64"], capsys)
    assert code == 0 and json.loads(out)["fits"] is True
