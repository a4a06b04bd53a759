"""``romsim fl run [--config fl.toml] [--resume] [--out DIR]``: a federated QLoRA fine-tune in
Flower's simulation engine. torch and flwr load only when the command runs."""

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
    return fl


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
