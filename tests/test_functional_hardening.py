"""`romsim generate` on bad input: exit 2, one `romsim: error:` line, nothing overwritten; and
the PEFT adapter that `romsim fl run` exports loads and generates."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from functional_fixtures import *  # noqa: F403  (session fixtures)

from romsim.cli import main

PROMPT = "The capital of France is"
IDS = [504, 3575, 282, 4649, 314]
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def _fl_export(out: Path, gguf: str, rank: int, seed: int, zero_b: bool = False) -> object:
    """An adapter written exactly as `romsim fl run` does (romsim.fl.train.export_peft on the
    run's bundle), from seeded arrays; returns the bundle (its peft model holds the arrays)."""
    pytest.importorskip("peft")
    from romsim.fl.config import LoraSection, ModelSection
    from romsim.fl.train import adapter_shapes, export_peft, init_adapter, load_bundle

    bundle = load_bundle(
        ModelSection(gguf=gguf), LoraSection(rank=rank, alpha=2.0 * rank, dropout=0.0), 1
    )
    arrays = init_adapter(adapter_shapes(bundle), seed)
    if not zero_b:  # a trained adapter: B != 0
        rng = np.random.default_rng(seed + 1)
        for k in arrays:
            if k.endswith(".B"):
                arrays[k] = (rng.standard_normal(arrays[k].shape) * 0.02).astype(np.float32)
    export_peft(bundle, arrays, str(out))
    return bundle


@dataclass
class Adapters:
    trained: Path
    zero: Path
    torch_logits: np.ndarray  # peft on the torch reference with the trained adapter
    tiny: Path  # what configs/fl-ci.toml exports: the random 4-layer tiny LLaMA, rank 4


@pytest.fixture(scope="module")
def adapters(smollm2_gguf, tmp_path_factory) -> Adapters:
    from romsim.functional.torch_ref import torch_logits

    root = tmp_path_factory.mktemp("adapters")
    _fl_export(root / "zero", "smollm2", rank=2, seed=0, zero_b=True)
    bundle = _fl_export(root / "trained", "smollm2", rank=2, seed=0)
    ref = torch_logits(bundle.model, IDS)
    _fl_export(root / "tiny", "tiny", rank=4, seed=0)
    return Adapters(root / "trained", root / "zero", ref, root / "tiny")


def _one_error_line(argv: list[str], capsys) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors (not an integer, ...)
        rc = e.code
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert rc == 2, (rc, cap.err)
    assert len(lines) == 1 and lines[0].startswith("romsim: error: "), cap.err
    return lines[0]


# ---------------------------------------------------------------- flags (no file needed)
FLAG_ROWS = [
    (["--act-bits", "0"], "--act-bits = 0: must be in [2, 16]"),
    (["--act-bits", "99"], "--act-bits = 99: must be in [2, 16]"),
    (["--top-k", "-1"], "--top-k = -1: must be >= 1"),
    (["--top-k", "0"], "--top-k = 0: must be >= 1"),
    (["--top-k", "100000"], "must be <= the vocabulary 49152"),
    (["--temperature", "nan"], "--temperature = nan: must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature = inf: must be a finite number >= 0"),
    (["--temperature", "-0.5"], "--temperature = -0.5: must be a finite number >= 0"),
    (["--temperature", "1e-300"], "must be 0 (greedy) or >= 1e-06"),
    (["--max-new-tokens", "0"], "--max-new-tokens = 0: must be >= 1"),
    (["--max-new-tokens", "-3"], "--max-new-tokens = -3: must be >= 1"),
    (["--max-new-tokens", "9000"], "new tokens must be <= the model's context 8192"),
    (["--max-new-tokens", "8000", "--kv-format", "fp32"], "does not fit in SRAM"),
    (["--max-new-tokens", "x"], "invalid int value"),
    (["--seed", "-1"], "--seed = -1: must be >= 0"),
    (["--prompt", ""], "--prompt = '': encodes to no tokens"),
    (["--rom-image", "x.rom", "--quant", "w4g128"], "cannot be combined with --rom-image"),
    (["--model", "no-such-model"], "--model = 'no-such-model': use smollm2-135m"),
]


@pytest.mark.parametrize("extra,expect", FLAG_ROWS, ids=[" ".join(r[0]) for r in FLAG_ROWS])
def test_bad_flag_is_one_line_exit_2(smollm2_gguf, extra, expect, capsys):
    argv = ["generate", "--prompt", PROMPT, *extra]
    assert expect in _one_error_line(argv, capsys)


# ---------------------------------------------------------------- files given by the user
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(a: Adapters, tmp: Path, **changes) -> Path:
    d = _copy(a.trained, tmp / "ad")
    cfg = json.loads((d / CONFIG).read_text())
    cfg.update(changes)
    (d / CONFIG).write_text(json.dumps(cfg))
    return d


def _edit_tensors(a: Adapters, tmp: Path, edit: Callable[[dict], None]) -> Path:
    from safetensors.numpy import load_file, save_file

    d = _copy(a.trained, tmp / "ad")
    t = load_file(str(d / WEIGHTS))
    edit(t)
    save_file(t, str(d / WEIGHTS))
    return d


KQ_A = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"
KQ_B = "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"


def _rename(t: dict, old: str, new: str) -> None:
    t[new] = t.pop(old)


def _nan(t: dict) -> None:
    t[KQ_B] = t[KQ_B].copy()
    t[KQ_B][3, 1] = np.nan


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _truncate(a: Adapters, tmp: Path) -> Path:
    d = _copy(a.trained, tmp / "ad")
    raw = (d / WEIGHTS).read_bytes()
    (d / WEIGHTS).write_bytes(raw[: len(raw) // 2])
    return d


def _small_rom(tmp: Path, full: bool) -> Path:
    """A ROM image for another model: one matrix, or every matrix with the wrong shape."""
    from romsim.kernels.qmatmul import QTensor

    from romsim.rom import RomImage

    img = RomImage(name="other")
    qt = QTensor.quantize(np.ones((32, 64), np.float32), 4, 32)
    kinds = ("q", "k", "v", "o", "gate", "up", "down")
    names = [f"layers.{i}.{k}" for i in range(30) for k in kinds] if full else ["layers.0.q"]
    for nm in [*names, "lm_head"]:
        img.add(nm, qt)
    img.save(tmp / "other.rom")
    return tmp / "other.rom"


def _no_weights(a: Adapters, tmp: Path) -> Path:
    d = _copy(a.trained, tmp / "ad")
    (d / WEIGHTS).rename(d / "adapter_model.bin")
    return d


# (id, argv extra built from (adapters, tmp_path), expected text in the one line)
FILE_ROWS: list[tuple[str, Callable[[Adapters, Path], list[str]], str]] = [
    ("model missing", lambda a, t: ["--model", str(t / "m.gguf")], "no such file"),
    (
        "model is a folder",
        lambda a, t: ["--model", str(_mkdir(t / "m.gguf"))],
        "is a directory, not a file",
    ),
    (
        "model not gguf",
        lambda a, t: ["--model", str(_write(t / "m.gguf", b"hello"))],
        "not a GGUF file",
    ),
    ("rom image missing", lambda a, t: ["--rom-image", str(t / "x.rom")], "no such file"),
    ("rom image is a folder", lambda a, t: ["--rom-image", str(t)], "is a directory"),
    (
        "rom image not a rom",
        lambda a, t: ["--rom-image", str(_write(t / "x.rom", b"\0" * 64))],
        "not a ROM image",
    ),
    (
        "rom image of another model",
        lambda a, t: ["--rom-image", str(_small_rom(t, False))],
        "matrix missing",
    ),
    (
        "rom image shapes of another model",
        lambda a, t: ["--rom-image", str(_small_rom(t, True))],
        "shape must be (576, 576) for this model",
    ),
    ("lora missing", lambda a, t: ["--lora", str(t / "nope")], "no such folder or file"),
    ("lora empty folder", lambda a, t: ["--lora", str(t)], "no adapter_config.json"),
    (
        "lora other file",
        lambda a, t: ["--lora", str(_write(t / "w.txt", b"x"))],
        "give the adapter folder",
    ),
    ("lora config is a folder", lambda a, t: ["--lora", str(_cfg_dir(a, t))], "is a directory"),
    ("lora weights missing", lambda a, t: ["--lora", str(_no_weights(a, t))], "adapter_model.bin"),
    (
        "lora config not utf-8",
        lambda a, t: ["--lora", str(_raw_config(a, t, b'{"r": 2, "\xff": 1}'))],
        "is not UTF-8 JSON",
    ),
    (
        "lora config binary",
        lambda a, t: ["--lora", str(_raw_config(a, t, b"\x00\x01\x02"))],
        "is a binary file, not JSON",
    ),
    (
        "lora config bad json",
        lambda a, t: ["--lora", str(_raw_config(a, t, b'{"r": 2,'))],
        "invalid JSON",
    ),
    (
        "peft type not lora",
        lambda a, t: ["--lora", str(_edit_config(a, t, peft_type="IA3"))],
        "peft_type = 'IA3': only LoRA",
    ),
    (
        "dora",
        lambda a, t: ["--lora", str(_edit_config(a, t, use_dora=True))],
        "DoRA is not supported",
    ),
    (
        "unknown target module",
        lambda a, t: ["--lora", str(_edit_config(a, t, target_modules=["q_proj", "lm_head"]))],
        "target_modules = 'lm_head'",
    ),
    (
        "rank mismatch",
        lambda a, t: ["--lora", str(_edit_config(a, t, r=3))],
        "rank mismatch (adapter_config.json says r = 3)",
    ),
    (
        "fl-ci adapter (tiny model)",
        lambda a, t: ["--lora", str(a.tiny)],
        "the adapter was made for a different model",
    ),
    (
        "tensor for an unknown module",
        lambda a, t: [
            "--lora",
            str(_edit_tensors(a, t, lambda d: _rename(d, KQ_A, KQ_A.replace("k_proj", "x_proj")))),
        ],
        "target 'x_proj'",
    ),
    (
        "tensor beyond the last layer",
        lambda a, t: [
            "--lora",
            str(_edit_tensors(a, t, lambda d: _rename(d, KQ_A, KQ_A.replace(".0.", ".30.")))),
        ],
        "layer 30: this model has 30 layers",
    ),
    (
        "lora_A without lora_B",
        lambda a, t: ["--lora", str(_edit_tensors(a, t, lambda d: d.pop(KQ_B)))],
        "has no matching lora_B",
    ),
    (
        "nan in a tensor",
        lambda a, t: ["--lora", str(_edit_tensors(a, t, _nan))],
        "1 non-finite values",
    ),
    (
        "not a lora tensor",
        lambda a, t: [
            "--lora",
            str(_edit_tensors(a, t, lambda d: d.update(embed=np.zeros(4, np.float32)))),
        ],
        "not a LoRA A/B weight",
    ),
    (
        "safetensors truncated",
        lambda a, t: ["--lora", str(_truncate(a, t))],
        "truncated or corrupt",
    ),
    (
        "safetensors garbage",
        lambda a, t: ["--lora", str(_raw_weights(a, t, b"\x10\0\0\0\0\0\0\0not json at all!"))],
        "is not JSON",
    ),
]


def _cfg_dir(a: Adapters, t: Path) -> Path:
    d = _copy(a.trained, t / "ad")
    (d / CONFIG).unlink()
    (d / CONFIG).mkdir()
    return d


def _raw_config(a: Adapters, t: Path, data: bytes) -> Path:
    d = _copy(a.trained, t / "ad")
    (d / CONFIG).write_bytes(data)
    return d


def _raw_weights(a: Adapters, t: Path, data: bytes) -> Path:
    d = _copy(a.trained, t / "ad")
    (d / WEIGHTS).write_bytes(data)
    return d


@pytest.mark.parametrize("row", FILE_ROWS, ids=[r[0] for r in FILE_ROWS])
def test_bad_file_is_one_line_exit_2(adapters, row, tmp_path, capsys):
    _, build, expect = row
    argv = ["generate", "--prompt", PROMPT, "--max-new-tokens", "2", *build(adapters, tmp_path)]
    assert expect in _one_error_line(argv, capsys)


# ---------------------------------------------------------------- --save-rom targets
def _unwritable(t: Path) -> str:
    if os.geteuid() == 0:
        pytest.skip("root ignores permission bits")
    (t / "ro").mkdir(mode=0o500)
    return str(t / "ro" / "x.rom")


SAVE_ROWS: list[tuple[str, Callable[[Path], str], str]] = [
    ("a folder", lambda t: str(t), "is a directory; give a file name"),
    ("under a file", lambda t: str(_write(t / "f", b"keep") / "x.rom"), "which is a file"),
    ("unwritable folder", _unwritable, "not writable"),
    ("a file system that takes no files", lambda t: "/proc/romsim-test.rom", "cannot write in"),
]


@pytest.mark.parametrize("row", SAVE_ROWS, ids=[r[0] for r in SAVE_ROWS])
def test_bad_save_rom_target_is_refused_before_work(row, tmp_path, capsys):
    _, build, expect = row
    if build is SAVE_ROWS[3][1] and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    target = build(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = ["generate", "--prompt", PROMPT, "--save-rom", target]
    assert expect in _one_error_line(argv, capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    if (tmp_path / "f").exists():
        assert (tmp_path / "f").read_bytes() == b"keep"


def test_save_rom_over_the_model_file_is_refused(smollm2_gguf, tmp_path, capsys):
    link = tmp_path / "model.gguf"
    link.symlink_to(smollm2_gguf.path)
    st = smollm2_gguf.path.stat()
    argv = ["generate", "--prompt", PROMPT, "--model", str(link), "--save-rom", str(link)]
    assert "is the --model input file" in _one_error_line(argv, capsys)
    after = smollm2_gguf.path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------- the FL export generates
def test_fl_exported_adapter_matches_torch_and_zero_b_is_a_no_op(smollm2_gguf, adapters):
    from romsim.functional.model import FunctionalModel, load_peft_adapter

    hp = smollm2_gguf.hparams

    def logits(lora_dir: Path | None) -> np.ndarray:
        lora = load_peft_adapter(lora_dir, hp) if lora_dir else None
        fm = FunctionalModel.from_gguf(
            smollm2_gguf, datapath="float", kv_format="fp32", sram_bytes=16 << 20, max_tokens=8,
            lora=lora,
        )  # fmt: skip
        return fm.forward(IDS, all_logits=True)

    base, zero, trained = logits(None), logits(adapters.zero), logits(adapters.trained)
    assert np.array_equal(zero, base)  # B = 0: the adapter adds exactly nothing
    assert float(np.abs(trained - base).max()) > 0.01  # a trained adapter changes the output
    assert float(np.abs(trained - adapters.torch_logits).max()) < 1e-3  # and as peft does


def test_fl_exported_adapter_generates_through_the_cli(adapters, capsys):
    argv = ["generate", "--prompt", PROMPT, "--max-new-tokens", "3", "--no-stream"]
    assert main([*argv, "--lora", str(adapters.trained)]) == 0
    out = capsys.readouterr()
    assert "[functional] 5 prompt + 3 new tokens" in out.out and out.err == ""
    # the adapter named through either of its files loads the same way
    assert main([*argv, "--lora", str(adapters.trained / CONFIG)]) == 0
    assert "[functional] 5 prompt + 3 new tokens" in capsys.readouterr().out
