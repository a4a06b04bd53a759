"""Every bad input to the hardware-model commands (estimate, train-step, validate) gets one line
``romsim: error: ...`` naming the field, the value and the rule, exit code 2, no traceback, and
no file written or overwritten. One row per class of case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from romsim.cli import main

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 100,
}


def _model(**kw) -> str:
    return json.dumps({**TINY, **kw})


def _chip(body: str) -> str:
    return f'base = "roma-3b-w4"\n{body}\n'


# (id, files {name: text or bytes}, argv, words the error line must contain)
CASES = [
    # files
    ("toml-not-utf8", {"c.toml": b"\xff\xfe name = 1"}, ["estimate", "--config", "c.toml"],
     ["config", "UTF-8"]),
    ("toml-binary", {"c.toml": b"\x7fELF\x00\x00\x01"}, ["estimate", "--config", "c.toml"],
     ["binary"]),
    ("toml-invalid", {"c.toml": "name = = 3"}, ["estimate", "--config", "c.toml"], ["TOML"]),
    ("config-is-dir", {"d/x": ""}, ["estimate", "--config", "d"], ["directory"]),
    ("config-missing", {}, ["estimate", "--config", "nope.toml"], ["nope.toml", "preset"]),
    ("json-not-utf8", {"m.json": b"{\xff}"}, ["estimate", "--model", "m.json"], ["UTF-8"]),
    ("json-invalid", {"m.json": "{"}, ["estimate", "--model", "m.json"], ["JSON"]),
    ("json-not-object", {"m.json": "[1]"}, ["estimate", "--model", "m.json"], ["object"]),
    ("base-unknown", {"c.toml": 'base = "nope"'}, ["estimate", "--config", "c.toml"], ["base"]),
    # model files
    ("layers-1e6", {"m.json": _model(num_hidden_layers=10**6)},
     ["estimate", "--model", "m.json"], ["num_hidden_layers", "1024"]),
    ("vocab-1e12", {"m.json": _model(vocab_size=10**12)},
     ["estimate", "--model", "m.json"], ["vocab_size"]),
    ("maxpos-negative", {"m.json": _model(max_position_embeddings=-4)},
     ["estimate", "--model", "m.json"], ["max_position_embeddings", ">= 1"]),
    ("maxpos-string", {"m.json": _model(max_position_embeddings="4096")},
     ["estimate", "--model", "m.json"], ["max_position_embeddings", "integer"]),
    ("tie-string", {"m.json": _model(tie_word_embeddings="no")},
     ["estimate", "--model", "m.json"], ["tie_word_embeddings", "true or false"]),
    ("hidden-bool", {"m.json": _model(hidden_size=True)},
     ["estimate", "--model", "m.json"], ["hidden_size", "integer"]),
    ("kv-heads", {"m.json": _model(num_key_value_heads=3)},
     ["estimate", "--model", "m.json"], ["num_key_value_heads", "divide"]),
    ("model-type", {"m.json": _model(model_type="gpt2")},
     ["estimate", "--model", "m.json"], ["model_type"]),
    # sizes
    ("prompt-1e9", {}, ["estimate", "--prompt-len", "1000000000"],
     ["--prompt-len", "131072", "max_position_embeddings"]),
    ("gen-1e7", {}, ["estimate", "--gen-len", "10000000"], ["--gen-len", "131072"]),
    ("gen-zero", {}, ["estimate", "--gen-len", "0"], ["--gen-len", ">= 1"]),
    ("prompt-text", {}, ["estimate", "--prompt-len", "many"], ["--prompt-len", "integer"]),
    ("seq-1e9", {}, ["train-step", "--seq-len", "1000000000"], ["--seq-len", "context"]),
    ("batch-huge", {}, ["train-step", "--batch", str(10**9)], ["--batch", "<="]),
    # quant strings
    ("quant-x", {}, ["estimate", "--quant", "w4attn-wxmlp"], ["quant", "unknown format"]),
    ("quant-7bit", {}, ["estimate", "--quant", "w7attn-w2mlp"], ["quant", "bits"]),
    ("quant-ss", {}, ["estimate", "--quant", "w4g128ss"], ["quant", "unknown format"]),
    ("quant-empty", {}, ["estimate", "--quant", ""], ["quant", "unknown format"]),
    ("quant-group", {}, ["estimate", "--quant", "w4g7"], ["group_size"]),
    ("quant-table-type", {"c.toml": _chip("quant = 5")}, ["estimate", "--config", "c.toml"],
     ["quant", "table"]),
    # chip values that pass a type check but are nonsense
    ("vector-rows-0", {"c.toml": _chip("[mesh]\nvector_rows = 0")},
     ["estimate", "--config", "c.toml"], ["mesh.vector_rows", "vector units"]),
    ("macs-1e18", {"c.toml": _chip("[h_unit]\nmacs_per_unit_per_cycle = 1000000000000000000")},
     ["estimate", "--config", "c.toml"], ["h_unit.macs_per_unit_per_cycle", "MXU"]),
    ("link-1e18", {"c.toml": _chip("[interconnect]\nlink_bytes_per_cycle = 1000000000000000000")},
     ["estimate", "--config", "c.toml"], ["interconnect.link_bytes_per_cycle", "2048-bit"]),
    ("latency-1e18", {"c.toml": _chip("[vector]\nop_latency_cycles = 1000000000000000000")},
     ["estimate", "--config", "c.toml"], ["vector.op_latency_cycles", "65k"]),
    ("sram-1e18", {"c.toml": _chip("[sram]\nlora_kv_bytes = 1000000000000000000")},
     ["estimate", "--config", "c.toml"], ["sram.lora_kv_bytes", "Cerebras"]),
    ("clock-inf", {"c.toml": _chip("[tech]\nclock_hz = inf")},
     ["estimate", "--config", "c.toml"], ["tech.clock_hz", "finite"]),
    ("clock-nan", {"c.toml": _chip("[tech]\nclock_hz = nan")},
     ["estimate", "--config", "c.toml"], ["tech.clock_hz", "finite"]),
    ("alpha-nan", {"c.toml": _chip("[lora]\nalpha = nan")},
     ["estimate", "--config", "c.toml"], ["lora.alpha"]),
    ("lora-targets-empty", {"c.toml": _chip("[lora]\ntargets = []")},
     ["estimate", "--config", "c.toml"], ["lora.targets"]),
    ("unknown-key", {"c.toml": _chip("[mesh]\nrowz = 3")},
     ["estimate", "--config", "c.toml"], ["mesh.rowz", "unknown key"]),
    ("lora-rank-flag", {}, ["estimate", "--lora-rank", "99999"], ["lora.rank"]),
    ("rom-misfit", {}, ["estimate", "--model", "llama-3-8b"], ["ROM", "needs"]),
    # strict: --json must not hide a misfit
    ("strict-json-misfit", {"c.toml": _chip("[sram]\nlora_kv_bytes = 1000")},
     ["estimate", "--config", "c.toml", "--json", "--strict"], ["--strict", "sram"]),
    # output paths
    ("write-is-dir", {"d/x": ""}, ["validate", "--write", "d"], ["--write", "directory"]),
    ("write-under-file", {"f": "keep"}, ["validate", "--write", "f/out.md"],
     ["--write", "which is a file"]),
]  # fmt: skip


@pytest.mark.parametrize("files,argv,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, files, argv, words):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors exit through the parser
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("romsim: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing overwritten


def test_strict_json_still_prints_the_json(capsys, tmp_path):
    """--json --strict on a misfit: the JSON object on stdout (fits = false), the reason on
    stderr, exit 2."""
    c = tmp_path / "c.toml"
    c.write_text(_chip("[sram]\nlora_kv_bytes = 1000"))
    assert main(["estimate", "--config", str(c), "--json", "--strict"]) == 2
    out = capsys.readouterr().out
    assert json.loads(out)["fits"] is False


def test_good_inputs_still_pass(tmp_path, capsys):
    """The new rules refuse nonsense only: the presets, the README's chip file and the new quant
    spellings all still work."""
    c = tmp_path / "my.toml"
    c.write_text(
        'base = "roma-3b-w4"\nname = "my-chip"\nquant = "w4attn-w2mlp"\n'
        "[cell]\ncells_per_unit = 64\n[tech]\nprocess_nm = 16\n"
    )
    for argv in (
        ["estimate", "--json"],
        ["estimate", "--preset", "roma-8b-w2", "--json"],
        ["estimate", "--config", str(c), "--json"],
        ["estimate", "--quant", "w4g64attn-w2g128mlp", "--json"],
        ["estimate", "--quant", "W4G128S", "--json"],
        ["estimate", "--prompt-len", "4000", "--gen-len", "96", "--json"],
    ):
        assert main(argv) == 0, argv
        json.loads(capsys.readouterr().out)


def test_validate_write_is_atomic_and_strict_json(tmp_path, capsys):
    out = tmp_path / "sub" / "validation.md"
    assert main(["validate", "--write", str(out), "--json"]) == 0
    assert out.read_text().startswith("#")
    json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the "wrote ..." line
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_json_output_has_no_nan():
    from romsim.jsonout import dumps

    assert json.loads(dumps({"a": float("nan"), "b": [float("inf"), 1.0]})) == {
        "a": None,
        "b": [None, 1.0],
    }


def test_paths_refuse_before_writing(tmp_path):
    from romsim.errors import RomsimInputError
    from romsim.paths import check_output_dir, check_output_file

    (tmp_path / "f").write_text("x")
    with pytest.raises(RomsimInputError, match="is a file"):
        check_output_dir(tmp_path / "f", "--out")
    with pytest.raises(RomsimInputError, match="which is a file"):
        check_output_dir(tmp_path / "f" / "sub", "--out")
    with pytest.raises(RomsimInputError, match="directory"):
        check_output_file(tmp_path, "--write")
    assert check_output_dir(tmp_path / "new" / "deeper", "--out") == Path(
        tmp_path / "new" / "deeper"
    )
    assert not (tmp_path / "new").exists()  # a check creates nothing
