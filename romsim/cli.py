"""The ``romsim`` command. Heavy modules (torch, numba kernels, amaranth) load only inside the
subcommands that need them, so ``romsim estimate`` starts fast."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Callable

from romsim import jsonout
from romsim.errors import RomsimInputError

EXIT_BAD_INPUT = 2
MAX_BATCH = 1 << 16  # sequences per training step: far beyond any on-device fine-tune


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention)
        self.exit(EXIT_BAD_INPUT, f"romsim: error: {message}\n")


def _positive_int(name: str, maximum: int | None = None) -> Callable[[str], int]:
    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} = {s!r}: must be an integer") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} = {v}: must be >= 1")
        if maximum is not None and v > maximum:
            raise argparse.ArgumentTypeError(f"{name} = {v}: must be <= {maximum}")
        return v

    return conv


def _load_design(args: argparse.Namespace):
    from romsim.config import load_chip
    from romsim.modelspec import load_model
    from romsim.quant import named_quant

    chip = load_chip(args.config or args.preset)
    if args.quant is not None:
        chip = chip.model_copy(update={"quant": named_quant(args.quant)})
    if args.lora_rank is not None:
        chip = chip.with_overrides(**{"lora.rank": args.lora_rank})
    model = load_model(args.model or chip.model)
    return model, chip


def _check_context(model, **lengths: int) -> None:
    """The tokens a run holds must fit the model's context (``max_position_embeddings``);
    this also bounds the per-token arrays the estimate allocates."""
    total = sum(lengths.values())
    if total > model.max_position_embeddings:
        names = " + ".join(f"--{k.replace('_', '-')}" for k in lengths)
        shown = " + ".join(str(v) for v in lengths.values())
        raise RomsimInputError(
            names,
            shown,
            f"must be <= {model.name}'s context of {model.max_position_embeddings} tokens "
            "(max_position_embeddings)",
        )


def _add_design_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset", default="roma-3b-w4", help="shipped chip preset (default: roma-3b-w4)"
    )
    p.add_argument(
        "--config", help='chip TOML file (overrides --preset; may say base = "<preset>")'
    )
    p.add_argument(
        "--model", help="shipped model name or a LLaMA-style config.json (default: the chip's)"
    )
    p.add_argument("--quant", help="weight format, e.g. w4g128, w2g128, w4attn-w2mlp, nf4, q4_1")
    p.add_argument("--lora-rank", type=int, help="LoRA rank (0: no LoRA, at most 4096)")


def cmd_estimate(args: argparse.Namespace) -> int:
    from romsim.estimate import estimate, require_rom_fit
    from romsim.perf.model import PerfModel

    if args.design:  # a design of an explore run: its base chip, parameters and workload
        from romsim.explore.run import design_from_ref

        model, chip, args.prompt_len, args.gen_len, _ = design_from_ref(args.design)
    else:
        model, chip = _load_design(args)
    _check_context(model, prompt_len=args.prompt_len, gen_len=args.gen_len)
    if args.batch is not None:
        chip = chip.with_overrides(**{"operating.batch": args.batch})
    if args.compare_styles:
        return _compare_styles(args, model, chip)
    pm = PerfModel(model, chip)
    if not args.allow_unfit:
        require_rom_fit(model, chip, pm.mapping)
    est = estimate(model, chip, args.prompt_len, args.gen_len, per_layer=True, perf=pm)
    if args.json:
        print(jsonout.dumps(est.to_dict(), indent=None if args.compact else 2))
    else:
        from romsim.report import print_estimate

        print_estimate(est, chip, detail=args.detail)
    if not est.fits and args.strict:
        print(f"romsim: error: --strict: the run does not fit: {'; '.join(est.fit_problems)}",
              file=sys.stderr)  # fmt: skip
        return EXIT_BAD_INPUT
    return 0


def _compare_styles(args: argparse.Namespace, model, chip) -> int:
    """The same model and chip with each ROM style (rom.style): B-ROM, ROM macro, logic ROM."""
    from romsim.estimate import estimate

    out = {}
    for style in ("brom", "rom", "logic"):
        c = chip.with_overrides(**{"rom.style": style})
        out[style] = estimate(model, c, args.prompt_len, args.gen_len, per_layer=False)
    if args.json:
        keys = ("area_mm2", "decode_tokens_per_s", "energy_per_token_j", "power_w", "fits")
        summary = {
            s: {k: getattr(e, k) for k in keys} | {"area_breakdown_mm2": e.area_breakdown_mm2}
            for s, e in out.items()
        }
        print(jsonout.dumps(summary, indent=None if args.compact else 2))
    else:
        from romsim.report import print_style_comparison

        print_style_comparison(out)
    return 0


def cmd_train_step(args: argparse.Namespace) -> int:
    from romsim.perf.model import PerfModel
    from romsim.perf.train import train_step_cost

    model, chip = _load_design(args)
    _check_context(model, seq_len=args.seq_len)
    cost = train_step_cost(PerfModel(model, chip), args.batch, args.seq_len)
    d = cost.__dict__
    if args.json:
        print(jsonout.dumps(d, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(
            title=f"LoRA training step: {model.name} on {chip.name}, batch {args.batch} x {args.seq_len}"
        )
        t.add_column("quantity")
        t.add_column("value", justify="right")
        for k, v in d.items():
            t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        Console().print(t)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from romsim.paths import check_output_file, write_text_atomic
    from romsim.validation import render_document, render_markdown, validation_rows

    if args.write:
        check_output_file(args.write, "--write")  # before the work, so nothing is lost
    rows = validation_rows()
    md = render_markdown(rows)
    if args.write:
        write_text_atomic(args.write, render_document(rows))
        print(f"wrote {args.write}")
    if args.json:
        print(jsonout.dumps([r.__dict__ for r in rows], indent=2))
    elif not args.write:
        print(md)
    bad = [r for r in rows if r.target_pct is not None and abs(r.error_pct) > r.target_pct]
    return 1 if (bad and args.strict) else 0


def cmd_constants(args: argparse.Namespace) -> int:
    from romsim.paths import check_output_file, write_text_atomic
    from romsim.tech.constants_doc import render_constants

    text = render_constants()
    if args.write:
        check_output_file(args.write, "--write")
        write_text_atomic(args.write, text)
        print(f"wrote {args.write}")
    else:
        print(text)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from romsim.trace import run

    return run(args)


def cmd_list(args: argparse.Namespace) -> int:
    from romsim.config import load_chip, presets
    from romsim.modelspec import load_model, shipped_models

    if args.what == "presets":
        for name in presets():
            c = load_chip(name)
            print(f"{name:16s} {c.description}")
    else:
        for name in shipped_models():
            m = load_model(name)
            print(
                f"{name:16s} {m.n_params / 1e9:6.3f} B params, {m.n_layers} layers, hidden {m.hidden_size}"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="romsim", description="Simulator for ROM-based on-device QLoRA accelerators")
    p.add_argument("--debug", action="store_true", help="show tracebacks for bad input")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    e = sub.add_parser("estimate", help="decode tokens/s, TTFT, energy, area of a design")
    _add_design_args(e)
    e.add_argument("--prompt-len", type=_positive_int("--prompt-len"), default=128)
    e.add_argument("--gen-len", type=_positive_int("--gen-len"), default=128)
    e.add_argument("--json", action="store_true", help="one JSON object on stdout")
    e.add_argument("--compact", action="store_true", help="with --json: a single line")
    e.add_argument("--detail", action="store_true", help="per-op breakdown and utilisation")
    e.add_argument(
        "--batch", type=_positive_int("--batch", 4096), help="sequences decoded together"
    )
    e.add_argument(
        "--compare-styles",
        action="store_true",
        help="the same design with each ROM style (brom, rom, logic) side by side",
    )
    e.add_argument(
        "--design",
        metavar="RUN:ID",
        help="a design of a `romsim explore` run (its chip, model and workload)",
    )
    e.add_argument("--strict", action="store_true", help="exit 2 if the run does not fit the SRAM")
    e.add_argument(
        "--allow-unfit",
        action="store_true",
        help="estimate even if the weights do not fit the ROM (reported as fits=false)",
    )
    e.set_defaults(func=cmd_estimate)

    t = sub.add_parser("train-step", help="cost and SRAM of one LoRA training step")
    _add_design_args(t)
    t.add_argument("--batch", type=_positive_int("--batch", MAX_BATCH), default=4)
    t.add_argument("--seq-len", type=_positive_int("--seq-len"), default=128)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_step)

    v = sub.add_parser("validate", help="romsim vs every figure the ROMA paper reports")
    v.add_argument("--write", help="write the markdown table to this file (docs/validation.md)")
    v.add_argument("--json", action="store_true")
    v.add_argument("--strict", action="store_true", help="exit 1 if a figure misses its target")
    v.set_defaults(func=cmd_validate)

    k = sub.add_parser("constants", help="the technology table and every constant's source")
    k.add_argument("--write", help="write the markdown to this file (docs/constants.md)")
    k.set_defaults(func=cmd_constants)

    tr = sub.add_parser("trace", help="Perfetto/Chrome timeline of a prefill and decode tokens")
    _add_design_args(tr)
    tr.add_argument(
        "--prompt-len",
        type=_positive_int("--prompt-len"),
        default=32,
        help="prompt tokens (default 32)",
    )
    tr.add_argument(
        "--decode-tokens",
        type=_positive_int("--decode-tokens", 4096),
        default=4,
        help="decode steps after the prefill (default 4)",
    )
    tr.add_argument(
        "--layers",
        type=_positive_int("--layers"),
        help="decoder layers expanded per step (default: all; the rest collapse into one event)",
    )
    tr.add_argument("--format", choices=["json", "perfetto", "both"], default="json")
    tr.add_argument(
        "--out",
        help="output file (default trace.json; trace.perfetto-trace with --format perfetto; "
        "both: the protobuf beside the JSON, suffix .perfetto-trace)",
    )
    tr.add_argument("--png", help="also draw a Gantt chart of layer 0 to this PNG (matplotlib)")
    tr.add_argument(
        "--allow-unfit", action="store_true", help="trace even if the weights do not fit the ROM"
    )
    tr.set_defaults(func=cmd_trace)

    ls = sub.add_parser("list", help="shipped presets or models")
    ls.add_argument("what", choices=["presets", "models"])
    ls.set_defaults(func=cmd_list)

    # Subcommands of the other layers; each module keeps torch/amaranth/flwr imports inside
    # its functions so that building the parser stays light.
    for modname in (
        "romsim.functional.cli",
        "romsim.rtl_cli",
        "romsim.fl.cli",
        "romsim.explore.cli",
    ):
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name and (modname == e.name or modname.startswith(e.name + ".")):
                continue
            raise
        mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `romsim ... | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RomsimInputError as e:
        if args.debug:
            raise
        print(f"romsim: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # a file the OS refused (disk full, permissions changed mid-run)
        if args.debug or e.filename is None:
            raise
        print(f"romsim: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("romsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
