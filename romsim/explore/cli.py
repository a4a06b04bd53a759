"""``romsim explore``: sweep a spec (grid, NSGA-II or optuna), show the best designs of a run,
export one design as a chip TOML. Heavy libraries load only inside the commands."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    ex = subparsers.add_parser(
        "explore",
        help="architecture exploration: sweeps, search, Pareto fronts (see docs/explore.md)",
        description="romsim explore --spec SPEC.toml --out RUN [--resume] [--ray auto|ADDRESS]; "
        "romsim explore show RUN; romsim explore export RUN:ID --out chip.toml",
    )
    _run_args(ex)
    ex.set_defaults(func=cmd_explore_run)
    sub = ex.add_subparsers(dest="explore_cmd", required=False, parser_class=type(ex))
    r = sub.add_parser("run", help="run (or resume) a sweep spec (the default)")
    _run_args(r)
    r.set_defaults(func=cmd_explore_run)
    s = sub.add_parser("show", help="the best designs of a finished run")
    s.add_argument("run", help="run folder")
    s.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    s.add_argument("--by", help="sort field (default: the first objective)")
    s.add_argument("--all", action="store_true", help="include infeasible designs")
    s.add_argument("--json", action="store_true", help="JSON rows on stdout")
    s.set_defaults(func=cmd_explore_show)
    x = sub.add_parser("export", help="write one design of a run as a chip TOML")
    x.add_argument("ref", metavar="RUN:ID")
    x.add_argument("--out", required=True, help="chip TOML to write")
    x.set_defaults(func=cmd_explore_export)
    return ex


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="sweep spec TOML (examples/explore-*.toml)")
    p.add_argument("--out", help="run folder (made if missing)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument(
        "--ray", metavar="auto|local|ADDRESS",
        help="run grid chunks as Ray tasks: 'local' (a 2-CPU Ray on this machine), 'auto' (the "
        "cluster this machine belongs to) or a cluster address (ray://host:10001)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_explore_run(args: argparse.Namespace) -> int:
    from romsim import jsonout
    from romsim.errors import RomsimInputError
    from romsim.explore.spec import load_spec

    if not args.spec:
        raise RomsimInputError("--spec", None, "a sweep needs --spec SPEC.toml")
    if not args.out:
        raise RomsimInputError("--out", None, "a sweep needs --out RUN_FOLDER")
    spec = load_spec(args.spec)
    method = spec.search.method
    if args.ray and method != "grid":
        raise RomsimInputError("--ray", args.ray, f"runs grid chunks; search.method is {method!r}")
    if method == "grid":
        from romsim.explore.run import run_grid

        s = run_grid(spec, args.out, resume=args.resume, ray_address=args.ray,
                     progress=not args.no_progress and sys.stderr.isatty())  # fmt: skip
    elif method == "nsga2":
        from romsim.explore.search import run_nsga2

        s = run_nsga2(spec, args.out, resume=args.resume)
    else:
        from romsim.explore.search import run_optuna

        s = run_optuna(spec, args.out, resume=args.resume)
    assert s is not None
    brief = {k: s[k] for k in ("evaluated", "stored", "valid", "feasible", "front_size",
                               "pruned_by_constraint", "seconds")}  # fmt: skip
    print(jsonout.dumps(brief))
    for f, b in s["best"].items():
        print(f"best {f} ({b['sense']}): {b['value']:.4g}  design {b['design_id']}")
    print(f"wrote {args.out}/: " + ", ".join(s["files"].values()) + ", summary.json")
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def cmd_explore_show(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from romsim import jsonout
    from romsim.errors import RomsimInputError
    from romsim.explore.fields import FIELDS
    from romsim.explore.run import load_results

    df = load_results(args.run)
    summary = json.loads((Path(args.run) / "summary.json").read_text())
    manifest = json.loads((Path(args.run) / "manifest.json").read_text())
    objs = summary["objectives"]
    by = args.by or objs[0]["field"]
    if by not in df.columns or by not in FIELDS:
        raise RomsimInputError(
            "--by",
            by,
            f"not a field of this run; one of {', '.join(f for f in FIELDS if f in df.columns)}",
        )
    if args.top < 1:
        raise RomsimInputError("--top", args.top, "must be >= 1")
    sense = next((o["sense"] for o in objs if o["field"] == by), FIELDS[by][1] or "min")
    rows = df if args.all else df[df["feasible"]]
    rows = rows.sort_values(by, ascending=sense == "min", na_position="last").head(args.top)
    cols = [
        "design_id",
        *manifest["axes"],
        *[o["field"] for o in objs if o["field"] != by],
        by,
        "pareto",
    ]
    if args.json:
        print(jsonout.dumps(rows[cols].to_dict(orient="records"), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.run}: top {len(rows)} by {by} ({sense})")
    for c in cols:
        left = c in ("design_id", "model", "quant", "rom.style")
        t.add_column(c.split(".")[-1], justify="left" if left else "right", no_wrap=True)
    for _, r in rows.iterrows():
        t.add_row(*[_fmt(r[c]) for c in cols])
    Console(width=None if sys.stdout.isatty() else 200).print(t)
    return 0


def cmd_explore_export(args: argparse.Namespace) -> int:
    from romsim.explore.run import chip_toml, design_from_ref
    from romsim.paths import check_output_file, write_text_atomic

    check_output_file(args.out, "--out")
    model, chip, pl, gl, row = design_from_ref(args.ref, "RUN:ID")
    write_text_atomic(args.out, chip_toml(chip, pl, gl, row["design_id"]))
    print(
        f"wrote {args.out} (romsim estimate --config {args.out} --prompt-len {pl} --gen-len {gl})"
    )
    return 0
