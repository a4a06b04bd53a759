"""Search where a grid is too big: pymoo NSGA-II (each generation's population evaluated in one
batched call) and optuna ask-and-tell (a batch of asked trials evaluated together; optional
storage for optuna-dashboard). Every axis is encoded as the index of its value (categorical and
integer axes alike). Hypervolume vs evaluations is reported with pymoo's HV indicator, on the
objectives normalised to the range of all feasible designs the search saw."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from romsim.explore.run import (
    axis_array,
    evaluate_params,
    hypervolume,
    merge_counts,
    min_costs,
    prepare_run_dir,
    write_outputs,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from romsim.explore.spec import SweepSpec

BIG = 1e300  # stands in for NaN objectives / constraints of invalid designs


def _decode(spec: SweepSpec, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Axis values of designs given as an (n, n_axes) array of value indices."""
    import numpy as np

    idx = np.asarray(np.rint(idx), dtype=np.int64)
    return {
        a.key: axis_array(a)[np.clip(idx[:, j], 0, len(a) - 1)] for j, a in enumerate(spec.axes)
    }


def _fg(spec: SweepSpec, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Objectives to minimise (F) and constraints <= 0 (G; the last one: the design is valid)."""
    import numpy as np

    f = np.nan_to_num(min_costs(df, spec.objectives), nan=BIG, posinf=BIG, neginf=-BIG)
    g = [-df[f"slack.{c.name}"].to_numpy(np.float64) for c in spec.constraints]
    g.append(np.where(df["valid"].to_numpy(bool), 0.0, 1.0))
    return f, np.nan_to_num(np.stack(g, axis=1), nan=BIG, posinf=BIG)


def hv_history(spec: SweepSpec, df: pd.DataFrame, checkpoints: list[int]) -> list[dict]:
    """Hypervolume of the feasible front among the first k evaluations, for each k."""
    import numpy as np
    from paretoset import paretoset

    costs = min_costs(df, spec.objectives)
    ok = df["feasible"].to_numpy(bool) & np.isfinite(costs).all(axis=1)
    if not ok.any():
        return [{"evaluations": k, "hypervolume": 0.0} for k in checkpoints]
    ideal, nadir = costs[ok].min(axis=0), costs[ok].max(axis=0)
    out = []
    for k in checkpoints:
        c = costs[:k][ok[:k]]
        front = c[paretoset(c, sense=["min"] * c.shape[1])] if len(c) else c
        out.append({"evaluations": k, "hypervolume": hypervolume(front, ideal, nadir)})
    return out


def _hv_png(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    ax.plot([h["evaluations"] for h in history], [h["hypervolume"] for h in history], "o-")
    ax.set_xlabel("designs evaluated")
    ax.set_ylabel("hypervolume (normalised, ref 1.1)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _finish(spec, run, frames, counts, checkpoints, t0, info) -> dict:
    import pandas as pd

    seen = pd.concat(frames, ignore_index=True)
    history = hv_history(spec, seen, checkpoints)
    df = seen.drop_duplicates("design_id", keep="first").reset_index(drop=True)
    agg = merge_counts(counts)
    _hv_png(history, run / "hypervolume.png", f"{spec.search.method}: hypervolume vs evaluations")
    extra = {
        "search": info | {"evaluations": len(seen), "distinct_designs": len(df)},
        "hypervolume_vs_evaluations": history,
    }
    s = write_outputs(
        spec, run, df, agg, stored="all", seconds=time.perf_counter() - t0, extra=extra
    )
    s["files"]["hypervolume"] = "hypervolume.png"
    return s


def run_nsga2(spec: SweepSpec, out: str, resume: bool = False) -> dict:
    import numpy as np
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.callback import Callback
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize

    run = prepare_run_dir(spec, out, resume)
    t0 = time.perf_counter()
    frames: list = []
    counts: list = []
    calls: list[int] = []
    s = spec.search
    n_g = len(spec.constraints) + 1

    class Sweep(Problem):
        def __init__(self) -> None:
            # a one-value axis gets [0, 0.5]; rounding sends every draw to index 0
            xu = np.array([max(len(a) - 1, 0.5) for a in spec.axes], dtype=float)
            super().__init__(
                n_var=len(spec.axes), n_obj=len(spec.objectives), n_ieq_constr=n_g, xl=0.0, xu=xu
            )

        def _evaluate(self, x, out, *args, **kwargs):  # one batched call per population
            df, c = evaluate_params(spec, _decode(spec, x))
            frames.append(df)
            counts.append(c)
            calls.append(len(df))
            out["F"], out["G"] = _fg(spec, df)

    checkpoints: list[int] = []

    class Track(Callback):
        def notify(self, algorithm):
            checkpoints.append(sum(calls))

    algo = NSGA2(
        pop_size=s.population,
        sampling=IntegerRandomSampling(),
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    minimize(Sweep(), algo, ("n_gen", s.generations), seed=s.seed, callback=Track(), verbose=False)
    info = {"library": "pymoo NSGA-II", "population": s.population, "generations": s.generations,
            "seed": s.seed, "evaluator_calls": len(calls)}  # fmt: skip
    return _finish(spec, run, frames, counts, checkpoints, t0, info)


def run_optuna(spec: SweepSpec, out: str, resume: bool = False) -> dict:
    import numpy as np
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = prepare_run_dir(spec, out, resume)
    t0 = time.perf_counter()
    s = spec.search

    # optuna >= 5: Trial.set_constraint (<= 0 feasible); older: the samplers' constraints_func
    new_api = hasattr(optuna.trial.Trial, "set_constraint")
    cf: dict[str, Any] = {}
    if not new_api:
        cf["constraints_func"] = lambda t: t.user_attrs.get("constraints", [BIG])
    samplers: dict[str, Any] = {
        "nsga2": lambda: optuna.samplers.NSGAIISampler(population_size=s.batch, seed=s.seed, **cf),
        "tpe": lambda: optuna.samplers.TPESampler(seed=s.seed, **cf),
        "random": lambda: optuna.samplers.RandomSampler(seed=s.seed),
    }
    names = [c.name for c in spec.constraints] + ["valid"]
    directions = ["maximize" if o.resolved_sense == "max" else "minimize" for o in spec.objectives]
    study = optuna.create_study(
        directions=directions, sampler=samplers[s.sampler](), storage=s.storage,
        study_name=s.study_name or f"romsim-{Path(spec.source).stem}", load_if_exists=s.storage is not None,
    )  # fmt: skip
    frames: list = []
    counts: list = []
    checkpoints: list[int] = []
    done = 0
    varied = [(j, a) for j, a in enumerate(spec.axes) if len(a) > 1]
    while done < s.trials:
        b = min(s.batch, s.trials - done)
        trials = [study.ask() for _ in range(b)]
        idx = np.zeros((b, len(spec.axes)), dtype=np.int64)
        for t_i, trial in enumerate(trials):
            for j, a in varied:
                v = trial.suggest_categorical(a.key, list(a.values))
                idx[t_i, j] = a.values.index(v)
        df, c = evaluate_params(spec, _decode(spec, idx))  # the whole batch in one call
        f, g = _fg(spec, df)
        valid = df["valid"].to_numpy(bool)
        for t_i, trial in enumerate(trials):
            trial.set_user_attr("constraints", [float(v) for v in g[t_i]])
            if new_api:
                for name, v in zip(names, g[t_i], strict=True):
                    trial.set_constraint(name, float(v))
            trial.set_user_attr("design_id", df.at[t_i, "design_id"])
            if valid[t_i]:
                vals = [
                    float(-v if o.resolved_sense == "max" else v)
                    for v, o in zip(f[t_i], spec.objectives, strict=True)
                ]
                study.tell(trial, vals)
            else:
                study.tell(trial, state=TrialState.FAIL)
        frames.append(df)
        counts.append(c)
        done += b
        checkpoints.append(done)
    info = {"library": f"optuna {optuna.__version__} ({s.sampler} sampler, ask-and-tell)",
            "trials": s.trials, "batch": s.batch, "seed": s.seed, "storage": s.storage,
            "study_name": study.study_name}  # fmt: skip
    return _finish(spec, run, frames, counts, checkpoints, t0, info)
