"""Pictures of a sweep: the front as a PNG (matplotlib) and an offline HTML (plotly, bundle
inline), both with constraint lines; the sensitivity bars (which axis moves each objective)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from romsim.explore.fields import FIELDS

if TYPE_CHECKING:
    import pandas as pd

    from romsim.explore.spec import SweepSpec

MAX_PLOT_POINTS = 20_000  # beyond this, non-front points are sampled (the front is kept whole)


def plot_axes(spec: SweepSpec) -> tuple[str, str]:
    objs = [o.field for o in spec.objectives]
    x = spec.plot.x or objs[0]
    y = spec.plot.y or next(
        (f for f in objs if f != x), "area_mm2" if x != "area_mm2" else "power_w"
    )
    return x, y


def _label(f: str) -> str:
    unit = FIELDS[f][0]
    return f"{f} [{unit}]" if unit else f


def _sample(df: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, bool]:
    import pandas as pd

    if len(df) <= MAX_PLOT_POINTS:
        return df, False
    front = df[df["pareto"]]
    if len(front) >= MAX_PLOT_POINTS:
        return front, True
    rest = df[~df["pareto"]].sample(n=MAX_PLOT_POINTS - len(front), random_state=seed)
    return pd.concat([rest, front]), True


def write_plots(spec: SweepSpec, run: Path, df: pd.DataFrame) -> dict[str, str]:
    x, y = plot_axes(spec)
    pts, sampled = _sample(df[df["valid"]])
    front_png(spec, pts, x, y, run / "front.png", sampled)
    front_html(spec, pts, x, y, run / "front.html", sampled)
    return {"front_png": "front.png", "front_html": "front.html"}


def _front_is_curve(spec: SweepSpec, x: str, y: str) -> bool:
    """A line joins the front only when it is the front of exactly the two plotted objectives."""
    return {o.field for o in spec.objectives} == {x, y}


def _constraint_lines(spec: SweepSpec, x: str, y: str) -> list[tuple[str, float, str]]:
    return [
        ("x" if c.field == x else "y", float(c.value), c.name)
        for c in spec.constraints
        if c.field in (x, y) and not isinstance(c.value, bool)
    ]


def front_png(spec, df, x: str, y: str, path: Path, sampled: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    inf = df[~df["feasible"]]
    feas = df[df["feasible"] & ~df["pareto"]]
    front = df[df["pareto"]].sort_values(x)
    ax.scatter(inf[x], inf[y], s=6, c="#cccccc", label=f"infeasible ({len(inf)})")
    ax.scatter(feas[x], feas[y], s=8, c="#4c72b0", alpha=0.6, label=f"feasible ({len(feas)})")
    style = "o-" if _front_is_curve(spec, x, y) else "o"
    ax.plot(
        front[x], front[y], style, c="#dd4444", ms=4, lw=1, label=f"Pareto front ({len(front)})"
    )
    for axis, v, name in _constraint_lines(spec, x, y):
        (ax.axvline if axis == "x" else ax.axhline)(v, ls="--", c="k", lw=1)
        if axis == "x":
            ax.annotate(
                name, (v, 1), xycoords=("data", "axes fraction"), rotation=90, va="top", fontsize=7
            )
        else:
            ax.annotate(
                name,
                (1, v),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize=7,
            )
    for f, setter in ((x, ax.set_xscale), (y, ax.set_yscale)):
        col = df[f].dropna()
        if len(col) and (col > 0).all() and col.max() / max(col.min(), 1e-300) > 100:
            setter("log")
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(f"{Path(spec.source).name}: {len(df)} designs" + (" (sampled)" if sampled else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def front_html(spec, df, x: str, y: str, path: Path, sampled: bool) -> None:
    import plotly.graph_objects as go

    from romsim.paths import write_text_atomic

    params = [a.key for a in spec.axes]
    shown = ["design_id", *params, *[f for f in FIELDS if f in df.columns]]
    shown += [c for c in df.columns if c.startswith("slack.")]
    fig = go.Figure()
    groups = (
        ("infeasible", ~df["feasible"], "#bbbbbb"),
        ("feasible", df["feasible"] & ~df["pareto"], "#4c72b0"),
        ("Pareto front", df["pareto"], "#dd4444"),
    )
    for name, mask, color in groups:
        d = df[mask]
        if name == "Pareto front":
            d = d.sort_values(x)
        custom = d[shown].astype(str).to_numpy()
        hover = "<br>".join(f"{c}: %{{customdata[{i}]}}" for i, c in enumerate(shown))
        fig.add_trace(
            go.Scattergl(
                x=d[x],
                y=d[y],
                mode="markers+lines"
                if name == "Pareto front" and _front_is_curve(spec, x, y)
                else "markers",
                name=f"{name} ({len(d)})",
                marker={"color": color, "size": 6 if name != "infeasible" else 4},
                customdata=custom,
                hovertemplate=hover + "<extra></extra>",
            )  # fmt: skip
        )
    for axis, v, name in _constraint_lines(spec, x, y):
        if axis == "x":
            fig.add_vline(x=v, line_dash="dash", annotation_text=name)
        else:
            fig.add_hline(y=v, line_dash="dash", annotation_text=name)
    fig.update_layout(
        title=f"{Path(spec.source).name}: {len(df)} designs" + (" (sampled)" if sampled else ""),
        xaxis_title=_label(x), yaxis_title=_label(y), template="plotly_white",
    )  # fmt: skip
    write_text_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))


def sensitivity(spec: SweepSpec, df: pd.DataFrame) -> dict[str, Any]:
    """For each objective and axis: the spread (max - min) of the objective's median over the
    axis' values, absolute and relative to the overall median; axes ranked by it."""
    import numpy as np

    base = df[df["feasible"]]
    scope = "feasible"
    if len(base) < 2:
        base, scope = df[df["valid"]], "valid"
    out: dict[str, Any] = {"over": scope, "objectives": {}}
    for o in spec.objectives:
        med = float(base[o.field].median()) if len(base) else float("nan")
        rows = []
        for a in spec.axes:
            if len(a) < 2 or not len(base):
                continue
            m = base.groupby(a.key, sort=True)[o.field].median()
            spread = float(m.max() - m.min())
            rows.append({
                "axis": a.key,
                "spread": spread,
                "relative_spread": spread / abs(med) if med and np.isfinite(med) else None,
                "best_value": _best_value(m, o.resolved_sense),
            })  # fmt: skip
        rows.sort(key=lambda r: -(r["relative_spread"] or 0))
        out["objectives"][o.field] = {"median": med, "axes": rows}
    return out if any(v["axes"] for v in out["objectives"].values()) else {}


def _best_value(m, sense: str) -> Any:
    if m.dropna().empty:
        return None
    k = m.idxmax() if sense == "max" else m.idxmin()
    return k.item() if hasattr(k, "item") else k


def sensitivity_png(sens: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objs = list(sens["objectives"].items())
    fig, axs = plt.subplots(1, len(objs), figsize=(4.5 * len(objs), 3.5), dpi=110, squeeze=False)
    for ax, (name, s) in zip(axs[0], objs, strict=True):
        rows = s["axes"][::-1]
        ax.barh(
            [r["axis"] for r in rows],
            [100 * (r["relative_spread"] or 0) for r in rows],
            color="#4c72b0",
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("spread of the median, % of overall median", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"sensitivity (over {sens['over']} designs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
