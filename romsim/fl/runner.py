"""Run a federated fine-tune: :func:`run_fl` (``romsim fl run``: Flower's simulation engine,
embedded), the :class:`ServerLoop` both engines run (setup, then per round the steps of
:mod:`romsim.fl.rounds` and a checkpoint, then the export), and :func:`preflight` (every check
that needs no torch, Ray or model).

The parts live in their own modules: :mod:`romsim.fl.rounds` (the round steps),
:mod:`romsim.fl.checkpoint` (checkpoint write/read and its validation),
:mod:`romsim.fl.metrics` (rows, metrics files, plot, progress bar), :mod:`romsim.fl.messages`
(Flower records and sending), :mod:`romsim.fl.client` (the ClientApp),
:mod:`romsim.fl.devices` (the clients' devices, :func:`make_devices`).

Output folder::

    config.json         the FL config of the run (resume refuses a different one)
    devices.json        every client's device: chip, SRAM, layer budget, step time, power
    metrics.csv         one row per round (round 0 = the un-tuned base)
    metrics.json        the same rows + per-client details + dropped clients with reasons
    metrics.png         accuracy / eval loss vs round and vs simulated time
    checkpoint/         state.json + round-NNNN.npz (global adapter + strategy state)
    adapter/            final global adapter, PEFT format (PeftModel.from_pretrained)
    tramark/            with [tramark]: client-NN/ personalized adapters + watermarks.json
    log.txt             the run's log
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from romsim.errors import RomsimInputError

# the public names of the FL run, importable from here as before the split
from romsim.fl.checkpoint import (  # noqa: F401
    check_planner_arrays,
    config_digest,
    expected_adapter_shapes,
    read_checkpoint,
    write_checkpoint,
)
from romsim.fl.devices import make_devices, tiny_spec  # noqa: F401
from romsim.fl.files import save_npz
from romsim.fl.metrics import CSV_FIELDS, Progress, plot_metrics, write_metrics  # noqa: F401

log = logging.getLogger("romsim.fl")

# names older callers import (tests, bench/)
_save_npz = save_npz
_check_planner_arrays = check_planner_arrays

# files only a finished (or started) run leaves in its output folder; a new run refuses them
RUN_OUTPUTS = ("checkpoint/state.json", "metrics.json", "metrics.csv", "adapter")


# ------------------------------------------------------------------------------ preflight
def check_run_folder(out: Path, resume: bool, field: str = "--out") -> bool:
    """Refuse to overwrite a run: ``out`` must be a writable folder (or makeable), and without
    ``resume`` hold none of :data:`RUN_OUTPUTS`. True when there is a checkpoint to resume."""
    from romsim.paths import check_output_dir

    check_output_dir(out, field)
    has_ck = (out / "checkpoint" / "state.json").exists()
    present = [n for n in RUN_OUTPUTS if (out / n).exists()]
    if not resume and has_ck:
        raise RomsimInputError(field, str(out),
                               "holds a checkpoint: pass --resume to continue it or pick another folder")  # fmt: skip
    if not resume and present:
        raise RomsimInputError(field, str(out),
                               f"holds a finished run ({present[0]}): pick another folder")  # fmt: skip
    if resume and not has_ck and present:
        raise RomsimInputError("--resume", str(out),
                               f"holds a run ({present[0]}) but no checkpoint/state.json to resume from")  # fmt: skip
    return resume and has_ck


def _check_model_file(cfg) -> None:
    if cfg.model.gguf in ("tiny", "smollm2"):
        return
    p = Path(cfg.model.gguf)
    if not p.is_file():
        raise RomsimInputError("model.gguf", cfg.model.gguf,
                               "no such file (a LLaMA GGUF path, 'smollm2' or 'tiny')")  # fmt: skip


def preflight(cfg, out: str | Path, resume: bool, field: str = "--out"):
    """Every check that needs no torch, Ray or model, so a bad input fails in well under a
    second: devices, the model file, the output folder and, on resume, the whole checkpoint.
    Returns the validated checkpoint (see :func:`read_checkpoint`) or None (a fresh start)."""
    devices = make_devices(cfg)
    from romsim.fl.strategy import check_strategy

    check_strategy(cfg, devices)
    _check_model_file(cfg)
    out_p = Path(out)
    if check_run_folder(out_p, resume, field):
        return read_checkpoint(out_p / "checkpoint", cfg, expected_adapter_shapes(cfg, devices))
    return None


def runtime_from_run_config(run_config) -> dict:
    """Deployment engine: the ServerApp's run config names the FL TOML (``config``), and
    optionally ``out`` and ``resume``."""
    from romsim.fl.config import load_fl_config

    if "config" not in run_config:
        raise RomsimInputError(
            "run_config.config",
            None,
            "name the FL TOML: flwr run . --run-config 'config=\"fl.toml\"'",
        )
    cfg = load_fl_config(str(run_config["config"]))
    out = str(run_config.get("out", cfg.run.out))
    return {"cfg": cfg, "out": out, "resume": bool(run_config.get("resume", False))}


# ------------------------------------------------------------------------------ server loop
class ServerLoop:
    """The server of a run (the ServerApp's main, both engines): set up, round 0, then every
    round's steps (:mod:`romsim.fl.rounds`) and its checkpoint, then the export."""

    def __init__(self, grid, cfg, out: str, resume: bool = False, progress: bool = True,
                 stop_after: int | None = None, node_timeout_s: float = 300.0):  # fmt: skip
        self.grid = grid
        self.cfg = cfg
        self.out = Path(out)
        self.resume = resume
        self.progress = progress
        self.stop_after = stop_after  # testing: end after this round (simulates a kill)
        self.node_timeout_s = node_timeout_s
        self.cfg_json = json.dumps(cfg.to_dict(), sort_keys=True)
        self.tramark = None  # romsim.fl.tramark.TraMarkServer, set by run()

    def run(self) -> dict:
        from romsim.fl import rounds
        from romsim.fl.messages import Mailbox

        cfg = self.cfg
        ckpt = preflight(cfg, self.out, self.resume)  # again here: the deployment engine
        self.out.mkdir(parents=True, exist_ok=True)
        ck = self.out / "checkpoint"
        ck.mkdir(exist_ok=True)
        _setup_file_log(self.out / "log.txt")
        cdig = config_digest(cfg)
        s = rounds.setup(cfg)
        self.tramark = s.tramark
        start = rounds.start(s, ck, ckpt is not None, self.out)
        rounds.write_run_info(s, self.out)
        mail = Mailbox(self.grid, self.cfg_json, self.node_timeout_s)
        rounds.connect(s, mail)
        if start == 1:
            rounds.base_round(s)
            self._checkpoint(ck, 0, s.glob, s.planner, s.rows, s.details, cdig)

        prog = Progress(cfg.run.rounds, start - 1, self.progress)
        try:
            for rnd in range(start, cfg.run.rounds + 1):
                r = rounds.begin(s, rnd)
                rounds.score(s, mail, r)
                rounds.assign(s, r)
                rounds.train(s, mail, r)
                rounds.filter_replies(s, r)
                rounds.aggregate(s, r)
                rounds.evaluate(s, r)
                self._checkpoint(ck, rnd, s.glob, s.planner, s.rows, s.details, cdig)
                prog.advance(r.row)
                log.info("round %d: accuracy %.4f, eval loss %.4f, round time %.3f s (simulated), "
                         "%d ok, %d dropped", rnd, r.row["accuracy"], r.row["eval_loss"],
                         r.row["round_time_s"], r.row["clients_ok"], r.row["clients_dropped"])  # fmt: skip
                if self.stop_after is not None and rnd >= self.stop_after:
                    log.info("stopping after round %d (stop_after)", rnd)
                    return {"rows": s.rows, "stopped": True}
        finally:
            prog.close()
        write_metrics(self.out, s.rows, s.details)
        rounds.export(s, self.out)
        try:
            plot_metrics(self.out, s.rows)
        except Exception as e:  # the plot is a convenience
            log.warning("plot failed: %s", e)
        return {"rows": s.rows, "stopped": False}

    def _checkpoint(self, ck: Path, rnd, glob, planner, rows, details, cdig) -> None:
        """Round ``rnd``'s checkpoint, then the metrics files up to it."""
        write_checkpoint(ck, rnd, glob, planner, rows, details, cdig, self.tramark)
        write_metrics(self.out, rows, details)


def _setup_file_log(path: Path) -> None:
    lg = logging.getLogger("romsim.fl")
    lg.setLevel(logging.INFO)
    for h in list(lg.handlers):
        if isinstance(h, logging.FileHandler):
            lg.removeHandler(h)
            h.close()
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    lg.addHandler(fh)


# ------------------------------------------------------------------------------ simulation
def _prepare_env(out: Path) -> None:
    tmp = Path(os.environ.get("ROMSIM_FL_TMP", "/tmp")) / f"romsim-ray-{os.getuid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_TMPDIR", str(tmp))
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray starts workers at nice 15; the clients' training is this run's main work
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_fl(cfg, out: str | None = None, resume: bool = False, progress: bool = True,
           stop_after: int | None = None) -> dict:  # fmt: skip
    """Run ``cfg`` in Flower's simulation engine (embedded, no servers to start)."""
    from romsim.fl.quiet import quiet_third_party

    quiet_third_party()
    out_p = Path(out or cfg.run.out)
    # every check that needs no Ray/torch, before the output folder is touched
    preflight(cfg, out_p, resume, "--out" if out else "run.out")
    from romsim.fl.client import client_app

    out_p.mkdir(parents=True, exist_ok=True)
    _prepare_env(out_p)
    result: dict = {}
    input_errors: list[RomsimInputError] = []

    def _main(grid, context):
        try:
            result.update(ServerLoop(grid, cfg, str(out_p), resume, progress, stop_after).run())
        except RomsimInputError as e:  # one line for the user, not Flower's traceback
            input_errors.append(e)

    from flwr.serverapp import ServerApp

    server = ServerApp()
    server.main()(_main)
    sim = cfg.simulation
    ncpu = sim.num_cpus or os.cpu_count() or 1
    backend = {
        "client_resources": {"num_cpus": min(sim.client_cpus, ncpu), "num_gpus": 0.0},
        "init_args": {
            "num_cpus": ncpu,
            "num_gpus": 0,
            "include_dashboard": False,
            "logging_level": "error",
            "log_to_driver": sim.verbose,
        },  # fmt: skip
    }
    from flwr.simulation import run_simulation

    quiet_third_party()  # again: importing flwr.simulation put its own filter in front
    run_simulation(server_app=server, client_app=client_app,
                   num_supernodes=cfg.n_clients, backend_config=backend,
                   verbose_logging=sim.verbose)  # fmt: skip
    if input_errors:
        raise input_errors[0]
    if not result:
        raise RuntimeError(f"the federated run failed; see {out_p / 'log.txt'}")
    return result
