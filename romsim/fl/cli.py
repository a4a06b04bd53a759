"""``romsim fl run [--config fl.toml] [--resume] [--out DIR]``: a federated QLoRA fine-tune in
Flower's simulation engine. ``romsim fl trace-leak ADAPTER [--run DIR | --config fl.toml]``:
which client of a TraMark run an exported adapter came from. torch and flwr load only when a
command runs."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    fl = subparsers.add_parser("fl", help="federated LoRA fine-tuning over simulated devices")
    sub = fl.add_subparsers(dest="fl_cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) a federated fine-tune from an FL TOML")
    r.add_argument("--config", help="FL config TOML (default: the built-in default run, the "
                   "same as configs/fl-default.toml)")  # fmt: skip
    r.add_argument("--out", help="output folder (default: run.out of the config)")
    r.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    r.add_argument("--rounds", type=int, help="override run.rounds")
    r.add_argument("--strategy", help="override strategy.name")
    r.add_argument("--defense", help="override strategy.defense (docs/robust.md)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_fl_run)
    t = sub.add_parser("trace-leak", help="name the client a leaked adapter of a TraMark run "
                       "came from (black-box queries of every client's watermark triggers)")  # fmt: skip
    t.add_argument("adapter", metavar="ADAPTER",
                   help="a PEFT adapter folder (e.g. RUN/tramark/client-03)")  # fmt: skip
    t.add_argument("--run", help="the run's output folder (its config.json); default: the "
                   "first parent folder of ADAPTER with a config.json")  # fmt: skip
    t.add_argument("--config", help="the run's FL TOML instead of --run's config.json")
    t.add_argument("--reference", help="the un-watermarked global adapter whose answers are "
                   "subtracted (default: RUN/adapter when it exists)")  # fmt: skip
    t.add_argument("--raw", action="store_true",
                   help="no reference: raw trigger accuracies (the official criterion)")  # fmt: skip
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=cmd_fl_trace_leak)
    return fl


def cmd_fl_trace_leak(args: argparse.Namespace) -> int:
    from romsim import jsonout
    from romsim.fl.quiet import quiet_third_party
    from romsim.fl.tramark import find_run, run_config_for, trace_leak

    quiet_third_party()
    run = find_run(args.adapter, args.run)
    cfg = run_config_for(run, args.config)
    ref = args.reference
    if ref is None and not args.raw and run is not None and (run / "adapter").is_dir():
        ref = str(run / "adapter")
    res = trace_leak(args.adapter, cfg, None if args.raw else ref)
    if args.json:
        print(jsonout.dumps(res))
        return 0
    who = "no single client (tie)" if res["client"] is None else f"client {res['client']}"
    how = "raw" if res["reference"] is None else f"minus reference {res['reference']}"
    print(f"{res['adapter']}: came from {who}: score {res['score']:+.3f}, runner-up client "
          f"{res['runner_up']} {res['runner_up_score']:+.3f}, margin {res['margin']:.3f} nats "
          f"({res['queries']} queries; target log-prob margins, {how})")  # fmt: skip
    ref_a = res["reference_trigger_accuracy"] or {}
    for c, m in res["margins"].items():
        extra = f" (reference {ref_a[c]:.3f})" if c in ref_a else ""
        print(f"  client {c}: score {m:+.3f}, trigger accuracy "
              f"{res['trigger_accuracy'][c]:.3f}{extra}")  # fmt: skip
    return 0


def cmd_fl_run(args: argparse.Namespace) -> int:
    from romsim import jsonout
    from romsim.errors import RomsimInputError
    from romsim.fl.config import FLConfig, fl_config_from_dict, load_fl_config
    from romsim.fl.runner import run_fl

    cfg = load_fl_config(args.config) if args.config else FLConfig()
    defense = getattr(args, "defense", None)
    if args.rounds is not None or args.strategy is not None or defense is not None:
        d = cfg.to_dict()
        if args.rounds is not None:
            d["run"]["rounds"] = args.rounds
        if args.strategy is not None:
            d["strategy"]["name"] = args.strategy
        if defense is not None:
            d["strategy"]["defense"] = defense
        try:
            cfg = fl_config_from_dict(d, source="command line")
        except RomsimInputError as e:  # name the flag the user typed
            flag = {"run.rounds": "--rounds", "strategy.name": "--strategy",
                    "strategy.defense": "--defense"}.get(e.field)  # fmt: skip
            if flag is None:
                raise
            raise RomsimInputError(flag, e.value, e.rule) from None
    # run_fl checks the output folder, checkpoint and devices before torch, Ray or the model
    res = run_fl(cfg, out=args.out, resume=args.resume, progress=not args.no_progress)
    out = args.out or cfg.run.out
    last, first = res["rows"][-1], res["rows"][0]
    print(jsonout.dumps({
        "out": out,
        "rounds": last["round"],
        "base_accuracy": first["accuracy"], "accuracy": last["accuracy"],
        "base_eval_loss": first["eval_loss"], "eval_loss": last["eval_loss"],
        "sim_time_s": last["sim_time_s"], "energy_j": last["energy_j"],
        "backdoor_success": last.get("backdoor_success"),
        "detect_precision": last.get("detect_precision"),
        "detect_recall": last.get("detect_recall"),
    }))  # fmt: skip
    return 0
