"""Metrics of a federated run: one row per round (round 0 = the un-tuned base), written as
``metrics.csv`` and ``metrics.json`` (rows + per-round details) after every round, the plot
``metrics.png`` and the progress bar. Torch-free."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from romsim import jsonout
from romsim.fl.files import atomic_write

CSV_FIELDS = (
    "round", "accuracy", "eval_loss", "train_loss", "clients_ok", "clients_dropped",
    "round_time_s", "sim_time_s", "round_energy_j", "energy_j", "bytes_up", "bytes_down",
    "trained_layers_mean", "host_wall_s", "backdoor_success", "detect_precision",
    "detect_recall", "defense_s",
    # [tramark] (romsim.fl.tramark.TraMarkServer.CSV)
    "wm_success", "wm_cross", "wm_base", "trace_rate", "wm_main_acc", "wm_acc_cost", "tramark_s",
)  # fmt: skip


def round_row(rnd: int, ev: dict, per_client: list[dict], n_dropped: int, prev_sim: float,
              prev_e: float) -> dict:  # fmt: skip
    """Round ``rnd``'s metrics row from the evaluation ``ev`` and the kept clients' metrics:
    the round lasts as long as its slowest client; energy and bytes add up over clients;
    ``prev_sim``/``prev_e``: the cumulative simulated time and energy before this round."""
    rt = max((m["device_time_s"] for m in per_client), default=0.0)
    e = sum(m["energy_j"] for m in per_client)
    losses = [m["train_loss"] for m in per_client]
    layers = [m["trained_layers"] for m in per_client]
    return {
        "round": rnd,
        "accuracy": ev["accuracy"],
        "eval_loss": ev["loss"],
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "clients_ok": len(per_client),
        "clients_dropped": n_dropped,
        "round_time_s": rt,
        "sim_time_s": prev_sim + rt,
        "round_energy_j": e,
        "energy_j": prev_e + e,
        "bytes_up": float(sum(m["bytes_up"] for m in per_client)),
        "bytes_down": float(sum(m["bytes_down"] for m in per_client)),
        "trained_layers_mean": float(np.mean(layers)) if layers else 0.0,
        "host_wall_s": 0.0,
        "backdoor_success": float("nan"),
        "detect_precision": float("nan"),
        "detect_recall": float("nan"),
        "defense_s": 0.0,
    }


def write_metrics(out: Path, rows: list[dict], details: list[dict]) -> None:
    """``out/metrics.csv`` (the rows) and ``out/metrics.json`` (rows + details), atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in CSV_FIELDS})
    atomic_write(out / "metrics.csv", buf.getvalue().encode())
    atomic_write(out / "metrics.json",
                 jsonout.dumps({"rounds": rows, "details": details}, indent=1).encode())  # fmt: skip


def plot_metrics(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = [x["round"] for x in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(r, [x["accuracy"] for x in rows], "o-")
    ax[0].set(xlabel="round", ylabel="held-out accuracy")
    ax[1].plot(r, [x["eval_loss"] for x in rows], "o-", color="C1")
    ax[1].set(xlabel="round", ylabel="eval loss (answer CE)")
    ax[2].plot([x["sim_time_s"] for x in rows], [x["accuracy"] for x in rows], "o-", color="C2")
    ax[2].set(xlabel="simulated wall time (s)", ylabel="held-out accuracy")
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=110)
    plt.close(fig)


class Progress:
    """The rounds' progress bar (rich, on stderr); does nothing when not ``enabled``."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.p = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as RichProgress

        # on stderr: stdout carries only the JSON summary (``romsim fl run ... | jq``)
        self.p = RichProgress(TextColumn("[bold]FL rounds"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[info]}"), console=Console(stderr=True))  # fmt: skip
        self.p.start()
        self.t = self.p.add_task("rounds", total=total, completed=done, info="")

    def advance(self, row: dict) -> None:
        if self.p:
            self.p.update(self.t, advance=1,
                          info=f"acc {row['accuracy']:.3f} loss {row['eval_loss']:.3f}")  # fmt: skip

    def close(self) -> None:
        if self.p:
            self.p.stop()
