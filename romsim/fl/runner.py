"""Run a federated fine-tune: the server loop (driven by the Flower ServerApp), checkpoints after
every round, resume, metrics (CSV + JSON + plot), final adapter export in PEFT format, and the
``run_simulation`` entry point ``romsim fl run`` uses.

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

import csv
import json
import logging
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from romsim import jsonout
from romsim.errors import RomsimInputError

log = logging.getLogger("romsim.fl")

CSV_FIELDS = (
    "round", "accuracy", "eval_loss", "train_loss", "clients_ok", "clients_dropped",
    "round_time_s", "sim_time_s", "round_energy_j", "energy_j", "bytes_up", "bytes_down",
    "trained_layers_mean", "host_wall_s", "backdoor_success", "detect_precision",
    "detect_recall", "defense_s",
    # [tramark] (romsim.fl.tramark.TraMarkServer.CSV)
    "wm_success", "wm_cross", "wm_base", "trace_rate", "wm_main_acc", "wm_acc_cost", "tramark_s",
)  # fmt: skip


# ------------------------------------------------------------------------------ helpers
def _numerics_overrides(cfg, overrides) -> dict:
    """A chip-numerics run trains at ``train.act_bits``: the devices' cost model uses the same
    activation width (``cell.act_bits``); FLConfig refuses a device class that says otherwise."""
    out = dict(overrides)
    if cfg.train.numerics == "chip":
        out["cell.act_bits"] = cfg.train.act_bits
    return out


def make_devices(cfg):
    """The run's clients as :class:`romsim.fl.devices.Device` (class order)."""
    from romsim.fl.devices import DeviceClassSpec, Link, build_devices

    classes = [
        DeviceClassSpec(
            name=d.name,
            chip=d.chip,
            count=d.count,
            overrides=_numerics_overrides(cfg, d.overrides),
            link=Link(d.link.uplink_bps, d.link.downlink_bps, d.link.latency_s),
        )
        for d in cfg.devices
    ]
    model = cfg.model.spec
    if cfg.model.gguf == "tiny":
        model = tiny_spec(cfg.model.tiny_layers)
    return build_devices(
        classes, model, cfg.model.quant, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets,
        cfg.train.seq_len, cfg.train.batch,
    )  # fmt: skip


def tiny_spec(n_layers: int):
    from romsim.modelspec import spec_from_config

    cfg = {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": n_layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 260,
        "tie_word_embeddings": True, "max_position_embeddings": 512,
    }  # fmt: skip
    return spec_from_config(cfg, f"tiny-llama-{n_layers}l")


def config_digest(cfg) -> str:
    import hashlib

    d = cfg.to_dict()
    d["run"] = {k: v for k, v in d["run"].items() if k != "out"}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(path, buf.getvalue())


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# files only a finished (or started) run leaves in its output folder; a new run refuses them
RUN_OUTPUTS = ("checkpoint/state.json", "metrics.json", "metrics.csv", "adapter")


def expected_adapter_shapes(cfg, devices=None) -> dict[str, tuple[int, int]]:
    """The global adapter's arrays (canonical key -> shape) from the model spec, torch-free:
    ``A`` is (rank, in_features), ``B`` (out_features, rank); the same as
    :func:`romsim.fl.train.adapter_shapes` of the loaded model."""
    devices = make_devices(cfg) if devices is None else devices
    spec, r = devices[0].model, cfg.lora.rank
    out: dict[str, tuple[int, int]] = {}
    for layer in range(spec.n_layers):
        for kind in cfg.lora.targets:
            n_out, k_in = spec.linear_shape(kind)
            out[f"{layer}.{kind}.A"] = (r, k_in)
            out[f"{layer}.{kind}.B"] = (n_out, r)
    return out


def _bad(path: Path, field: str, value: object, rule: str) -> RomsimInputError:
    return RomsimInputError(field, value, rule, source=str(path))


def _read_state(path: Path) -> dict:
    """``checkpoint/state.json``: a JSON object with round, file, config digest, rows, details."""
    try:
        st = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, "file", path.name, f"is truncated or corrupt ({e})") from None
    if not isinstance(st, dict):
        raise _bad(path, "file", path.name, "is not a JSON object")
    types = {"round": int, "file": str, "config_digest": str, "rows": list, "details": list}
    for key, typ in types.items():
        v = st.get(key)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise _bad(path, key, v, f"missing or not a {typ.__name__}")
    if st["round"] < 0:
        raise _bad(path, "round", st["round"], "must be >= 0")
    for i, row in enumerate(st["rows"]):
        if not isinstance(row, dict) or row.get("round") != i:
            shown = row.get("round") if isinstance(row, dict) else row
            raise _bad(path, f"rows.{i}.round", shown, f"is not the metrics row of round {i}")
        for k in CSV_FIELDS:  # JSON writes NaN as null; the rows in memory hold NaN again
            if row.get(k, 0.0) is None:
                row[k] = float("nan")
            elif not isinstance(row.get(k, 0.0), int | float):
                raise _bad(path, f"rows.{i}.{k}", row.get(k), "is not a number")
    return st


def _load_npz_checked(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise _bad(path, "file", path.name, "is missing (the checkpoint is incomplete)")
    try:
        return _load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise _bad(path, "file", path.name, f"is truncated or corrupt ({e})") from None


def _check_arrays(path: Path, prefix: str, arrs: dict[str, np.ndarray],
                  shapes: dict[str, tuple[int, ...]], exact: bool) -> None:  # fmt: skip
    """Keys, shapes, float dtype and finiteness of ``arrs`` against ``shapes``."""
    if exact and set(arrs) != set(shapes):
        missing = sorted(set(shapes) - set(arrs))[:3]
        extra = sorted(set(arrs) - set(shapes))[:3]
        what = f"missing {missing}" if missing else f"unknown {extra}"
        raise _bad(path, f"{prefix}*", f"{len(arrs)} tensors",
                   f"do not match the config's adapter ({len(shapes)} tensors): {what}")  # fmt: skip
    for k in sorted(arrs):
        a = arrs[k]
        if k not in shapes:
            raise _bad(path, prefix + k, tuple(a.shape), "is not a tensor of the config's adapter")
        if tuple(a.shape) != tuple(shapes[k]):
            raise _bad(path, prefix + k, tuple(a.shape), f"wrong shape, expected {shapes[k]}")
        if not np.issubdtype(a.dtype, np.floating):
            raise _bad(path, prefix + k, str(a.dtype), "is not a float tensor")
        if not np.all(np.isfinite(a)):
            raise _bad(path, prefix + k, tuple(a.shape), "holds NaN or inf")


def read_checkpoint(ck: Path, cfg=None, shapes: dict[str, tuple[int, int]] | None = None,
                    ) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
    """The last checkpoint in ``ck`` (a run's ``checkpoint/`` folder): its state (round,
    metrics rows, config digest), the global adapter arrays and the strategy's state arrays.

    Nothing read is trusted: a truncated or corrupt file, a round outside ``cfg``'s run, a
    different config, missing/extra tensors, wrong shapes (``shapes``: the adapter's, default
    :func:`expected_adapter_shapes`) or NaN/inf are each one :class:`RomsimInputError` naming
    the file."""
    st_path = ck / "state.json"
    st = _read_state(st_path)
    rnd = st["round"]
    if cfg is not None:
        if not 0 <= rnd <= cfg.run.rounds:
            raise _bad(st_path, "round", rnd,
                       f"is outside this run (0..run.rounds = {cfg.run.rounds})")  # fmt: skip
        if st["config_digest"] != config_digest(cfg):
            raise _bad(st_path, "config_digest", st["config_digest"],
                       "written by a different config (resume with the one it started with)")  # fmt: skip
    if st["file"] != f"round-{rnd:04d}.npz":  # also: no path outside checkpoint/
        raise _bad(st_path, "file", st["file"], f"is not the file of round {rnd}")
    if len(st["rows"]) != rnd + 1 or len(st["details"]) != rnd:
        raise _bad(st_path, "rows", f"{len(st['rows'])} rows, {len(st['details'])} details",
                   f"round {rnd} needs {rnd + 1} metrics rows and {rnd} details")  # fmt: skip
    npz = ck / st["file"]
    arrs = _load_npz_checked(npz)
    unknown = sorted(k for k in arrs if not k.startswith(("global/", "planner/")))
    if unknown:
        raise _bad(npz, unknown[0], None, "is not a checkpoint tensor (global/ or planner/)")

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrs.items() if k.startswith(prefix)}

    glob, planner = part("global/"), part("planner/")
    if cfg is not None:
        shapes = expected_adapter_shapes(cfg) if shapes is None else shapes
    if shapes is not None:
        _check_arrays(npz, "global/", glob, shapes, exact=True)
        _check_planner_arrays(npz, planner, shapes)
    return st, glob, planner


def _check_planner_arrays(npz: Path, arrs: dict[str, np.ndarray],
                          shapes: dict[str, tuple[int, int]]) -> None:  # fmt: skip
    """The strategy's state: STAgg's previous update per adapter tensor, the last norms."""
    stagg = {k[len("stagg/") :]: v for k, v in arrs.items() if k.startswith("stagg/")}
    _check_arrays(npz, "planner/stagg/", stagg, shapes, exact=False)
    last = {k[len("last/") :]: v for k, v in arrs.items() if k.startswith("last/")}
    _check_arrays(npz, "planner/last/", last, shapes, exact=False)
    other = sorted(set(arrs) - {f"stagg/{k}" for k in stagg} - {f"last/{k}" for k in last}
                   - {"norms/keys", "norms/values", "fim/prior"})  # fmt: skip
    if other:
        raise _bad(npz, "planner/" + other[0], None, "is not a strategy state tensor")
    if "fim/prior" in arrs:  # FIM-HLA's kept Fisher prior (fim_persist)
        fp = arrs["fim/prior"]
        n_layers = len({k.split(".")[0] for k in shapes})
        if (fp.shape != (n_layers,) or not np.issubdtype(fp.dtype, np.floating)
                or not np.all(np.isfinite(fp)) or np.any(fp < 0) or not fp.sum() > 0):  # fmt: skip
            raise _bad(npz, "planner/fim/prior", tuple(fp.shape),
                       f"must be {n_layers} finite non-negative layer probabilities")  # fmt: skip
    if ("norms/keys" in arrs) != ("norms/values" in arrs):
        raise _bad(npz, "planner/norms", sorted(arrs), "needs both norms/keys and norms/values")
    if "norms/keys" in arrs:
        keys, vals = arrs["norms/keys"], arrs["norms/values"]
        if keys.ndim != 1 or vals.shape != keys.shape or keys.dtype.kind != "U":
            raise _bad(npz, "planner/norms/values", tuple(vals.shape),
                       f"must be numbers, one per key ({keys.shape})")  # fmt: skip
        if not np.issubdtype(vals.dtype, np.number) or not np.all(np.isfinite(vals)):
            raise _bad(npz, "planner/norms/values", str(vals.dtype), "must be finite numbers")


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

    # ---------------------------------------------------------------- messaging
    def _send(self, node_ids: dict[int, int], mtype: str, make_content, rnd: int):
        from flwr.app import Message

        msgs = []
        for cid, nid in node_ids.items():
            msgs.append(Message(make_content(cid), dst_node_id=nid, message_type=mtype,
                                group_id=str(rnd)))  # fmt: skip
        replies = list(self.grid.send_and_receive(msgs))
        by_node = {nid: cid for cid, nid in node_ids.items()}
        out = {}
        for r in replies:
            out[by_node[r.metadata.src_node_id]] = r
        return out

    def _config_record(self, **kw):
        from flwr.app import ConfigRecord

        return ConfigRecord({"fl-config": self.cfg_json, **kw})

    def _discover(self) -> dict[int, int]:
        from flwr.app import RecordDict

        n = self.cfg.n_clients
        t0 = time.time()
        while True:
            nodes = list(self.grid.get_node_ids())
            if len(nodes) >= n:
                break
            if time.time() - t0 > self.node_timeout_s:
                raise RuntimeError(f"only {len(nodes)} of {n} SuperNodes connected")
            time.sleep(1.0)
        tmp = {i: nid for i, nid in enumerate(nodes)}
        replies = self._send(tmp, "query",
                             lambda _c: RecordDict({"config": self._config_record(action="hello")}), 0)  # fmt: skip
        mapping: dict[int, int] = {}
        digests = {}
        for i, r in replies.items():
            if r.has_error():
                log.warning("node %s failed the hello query: %s", tmp[i], r.error.reason)
                continue
            info = r.content["info"]
            pid = int(info["partition-id"])
            mapping[pid] = tmp[i]
            digests[pid] = str(info["digest"])
        missing = sorted(set(range(n)) - set(mapping))
        if missing:
            raise RuntimeError(f"no SuperNode answered for partition ids {missing}")
        self.client_digests = digests
        return {pid: mapping[pid] for pid in range(n)}

    # ---------------------------------------------------------------- main
    def run(self) -> dict:
        from flwr.app import RecordDict

        from romsim.fl.aggregation import ClientUpdate, validate_update
        from romsim.fl.attacks import Adversary, attacker_ids, auto_target, backdoor_test_set
        from romsim.fl.data import load_dataset, server_holdout
        from romsim.fl.defenses import detection
        from romsim.fl.strategy import Planner, fisher_holdout, module_keys
        from romsim.fl.train import (
            adapter_shapes,
            evaluate,
            export_peft,
            fisher_scores,
            init_adapter,
            load_bundle,
            set_adapter,
            unlearn_loss,
        )

        cfg = self.cfg
        ckpt = preflight(cfg, self.out, self.resume)  # again here: the deployment engine
        self.out.mkdir(parents=True, exist_ok=True)
        ck = self.out / "checkpoint"
        ck.mkdir(exist_ok=True)
        _setup_file_log(self.out / "log.txt")
        cdig = config_digest(cfg)
        devices = make_devices(cfg)
        bundle = load_bundle(cfg.model, cfg.lora, cfg.train.torch_threads, cfg.train)
        planner = Planner(cfg.strategy, devices, bundle.n_layers, cfg.run.seed)
        ds = load_dataset(cfg.data)
        test = ds.test[: cfg.data.eval_examples]
        fim_set = fisher_holdout(cfg, ds.test)  # FIM-HLA's server-side held-out items
        pool, aux = server_holdout(ds.train, cfg.masa_aux_count())
        adversary = Adversary(attacker_ids(cfg.attackers, cfg.n_clients, cfg.run.seed),
                              cfg.run.seed)  # fmt: skip
        bd = next((a for a in cfg.attackers if a.kind == "backdoor"), None)
        bd_test = None
        if bd is not None:
            bd_test = backdoor_test_set(test, bd.trigger, bd.target or auto_target(pool),
                                        bd.trigger_position, cfg.run.seed)  # fmt: skip
            log.info("attackers %s; backdoor target %r, %d triggered held-out items",
                     sorted(adversary.by_cid), bd.target or auto_target(pool), len(bd_test))  # fmt: skip

        def backdoor_rate() -> float:
            if not bd_test:
                return float("nan")
            return evaluate(bundle, bd_test, cfg.train.eval_batch)["accuracy"]

        def unlearn(arrays: dict[str, np.ndarray]) -> float:  # MASA's server-side step
            set_adapter(bundle, arrays)
            s = cfg.strategy
            return unlearn_loss(bundle, aux, s.masa_epochs, s.masa_batch, s.masa_lr, cfg.run.seed)

        tramark = None
        if cfg.tramark.enabled:  # per-client watermarks (romsim.fl.tramark)
            from romsim.fl.tramark import TraMarkServer

            tramark = TraMarkServer(cfg)
        self.tramark = tramark

        rows: list[dict] = []
        details: list[dict] = []
        start = 1
        if ckpt is not None:
            # the real model's shapes are the authority (the spec's were checked before Ray)
            st, glob, planner_arrays = read_checkpoint(ck, cfg, adapter_shapes(bundle))
            planner.load_state_arrays(planner_arrays)
            if tramark is not None:
                tramark.load(ck, st["round"], adapter_shapes(bundle))
            rows, details = st["rows"], st["details"]
            start = st["round"] + 1
            log.info("resuming %s after round %d", self.out, st["round"])
        else:
            glob = init_adapter(adapter_shapes(bundle), cfg.run.seed)
        (self.out / "config.json").write_text(jsonout.dumps(cfg.to_dict(), indent=2))
        (self.out / "devices.json").write_text(
            jsonout.dumps([d.describe() for d in devices], indent=2)
        )

        node_of = self._discover()
        bad = {c: d for c, d in self.client_digests.items() if d != bundle.digest}
        if bad:
            raise RuntimeError(f"clients {sorted(bad)} hold a different frozen base (ROM image) "
                               f"than the server ({bundle.digest})")  # fmt: skip
        log.info("%d clients, frozen base digest %s on all", len(node_of), bundle.digest)

        if start == 1:
            set_adapter(bundle, glob)
            ev = evaluate(bundle, test, cfg.train.eval_batch)
            rows.append(_row(0, ev, [], 0, {}, 0.0, 0.0))
            rows[-1]["backdoor_success"] = backdoor_rate()
            log.info("round 0 (base): accuracy %.4f, eval loss %.4f", ev["accuracy"], ev["loss"])
            self._checkpoint(ck, 0, glob, planner, rows, details, cdig)

        prog = _Progress(cfg.run.rounds, start - 1, self.progress)
        try:
            for rnd in range(start, cfg.run.rounds + 1):
                t0 = time.time()
                cids = planner.sample(rnd)
                nodes = {c: node_of[c] for c in cids}
                scores: dict[int, dict[str, float]] = {}
                probe: dict[int, dict[str, float]] = {}
                dropped: list[dict] = []
                tm_recs = None  # TraMark: each client's personalized adapter instead of glob
                if tramark is not None and tramark.active:
                    tm_recs = {c: _arrays_record(tramark.personal(c, glob)) for c in cids}
                if planner.needs_scores:
                    gl_rec = _arrays_record(glob)
                    reps = self._send(nodes, "query", lambda c, rnd=rnd, g=gl_rec, t=tm_recs: RecordDict({
                        "config": self._config_record(action="score", round=rnd, cid=c),
                        "global": g if t is None else t[c]}), rnd)  # fmt: skip
                    for c in cids:
                        r = reps.get(c)
                        if r is None or r.has_error():
                            why = "no reply" if r is None else r.error.reason
                            log.warning("round %d: client %d dropped from scoring: %s", rnd, c, why)
                            continue
                        sc = r.content["scores"]
                        scores[c] = dict(zip(sc["keys"], sc["values"], strict=True))
                        probe[c] = dict(r.content["metrics"])
                fisher = None  # FIM-HLA refresh: the server's Fisher scores on held-out items
                if planner.fisher_round(rnd):
                    t_f = time.time()
                    set_adapter(bundle, glob)
                    fisher = fisher_scores(bundle, fim_set)
                    log.info("round %d: server Fisher scores on %d held-out items, %.1f s",
                             rnd, len(fim_set), time.time() - t_f)  # fmt: skip
                assign = planner.assign(rnd, cids, scores, fisher)
                if planner.fim_note is not None:
                    log.info("round %d: FIM-HLA groups %s", rnd, planner.fim_note["groups"])
                gl_rec = _arrays_record(glob)
                sent = tm_recs  # per-client adapters instead of glob: TraMark's, or HetLoRA's
                views = planner.client_globals(glob, cids)  # rank-truncated copies
                if sent is None and views:
                    sent = {c: _arrays_record(views[c]) if c in views else gl_rec for c in cids}
                reps = self._send(nodes, "train", lambda c, rnd=rnd, g=gl_rec, a=assign, s=sent: RecordDict({
                    "config": self._config_record(
                        round=rnd, cid=c, modules=[f"{m[0]}.{m[1]}" for m in a[c]]),
                    "global": g if s is None else s[c]}), rnd)  # fmt: skip
                updates, per_client = [], []
                for c in cids:
                    r = reps.get(c)
                    reason = None
                    if r is None:
                        reason = "no reply"
                    elif r.has_error():
                        reason = f"client error: {r.error.reason}"
                    else:
                        try:
                            arrays = {k: v.numpy() for k, v in r.content["adapter"].items()}
                            m = dict(r.content["metrics"])
                            upd = ClientUpdate(c, float(m["num-examples"]), arrays)
                            reason = validate_update(upd, glob, module_keys(assign[c]))
                        except Exception as e:  # malformed reply
                            reason = f"malformed reply: {type(e).__name__}: {e}"
                    if reason:
                        log.warning("round %d: client %d dropped: %s", rnd, c, reason)
                        dropped.append({"round": rnd, "cid": c, "reason": reason})
                        continue
                    pm = probe.get(c, {})
                    m["device_time_s"] += pm.get("probe_time_s", 0.0)
                    m["energy_j"] += pm.get("probe_energy_j", 0.0)
                    m["bytes_down"] += pm.get("bytes_down", 0.0)
                    m["trained_layers"] = len({x[0] for x in assign[c]})
                    m["cid"] = c
                    m["class"] = devices[c].klass
                    updates.append(upd)
                    per_client.append(m)
                raw = {u.cid: u.arrays for u in updates}  # as trained (TraMark keeps its W)
                bad_ids = adversary.ids(rnd, [u.cid for u in updates])
                attack_notes: list[dict] = []
                if bad_ids:
                    updates, attack_notes = adversary.craft(rnd, glob, updates,
                                                            planner.last_update)  # fmt: skip
                if tramark is not None:  # aggregate the main region only
                    updates = tramark.strip(updates, glob)
                defense_rep, det = None, {"precision": float("nan"), "recall": float("nan")}
                if updates:
                    glob, _counts = planner.aggregate(glob, updates, len(bad_ids), unlearn)
                    if planner.last_defense is not None:
                        defense_rep = planner.last_defense.report
                        det = detection(planner.last_defense.flagged, bad_ids,
                                        [u.cid for u in updates])  # fmt: skip
                        log.info("round %d: %s kept %s, flagged %s (attackers %s), %.2f s",
                                 rnd, cfg.strategy.defense, defense_rep["kept"],
                                 defense_rep["flagged"], bad_ids, defense_rep["seconds"])  # fmt: skip
                else:
                    log.warning(
                        "round %d: every client dropped; the global adapter is unchanged", rnd
                    )
                set_adapter(bundle, glob)
                ev = evaluate(bundle, test, cfg.train.eval_batch)
                prev_sim = rows[-1]["sim_time_s"]
                prev_e = rows[-1]["energy_j"]
                row = _row(rnd, ev, per_client, len(dropped), {}, prev_sim, prev_e)
                row["host_wall_s"] = time.time() - t0
                row["backdoor_success"] = backdoor_rate()
                row["detect_precision"] = det["precision"]
                row["detect_recall"] = det["recall"]
                row["defense_s"] = defense_rep["seconds"] if defense_rep else 0.0
                tm_detail = None
                if tramark is not None:
                    tm_row, tm_detail = tramark.end_round(rnd, bundle, glob, raw, test,
                                                          cfg.train.eval_batch, ev["accuracy"])  # fmt: skip
                    row.update(tm_row)
                rows.append(row)
                details.append({"round": rnd, "clients": per_client, "dropped": dropped,
                                "assignment": {str(c): [f"{a}.{b}" for a, b in assign[c]]
                                               for c in cids},
                                "attackers": bad_ids, "attack": attack_notes,
                                "defense": defense_rep})  # fmt: skip
                if planner.fim_note is not None:  # a FIM-HLA refresh: scores, groups, prior
                    details[-1]["fim"] = planner.fim_note
                if tm_detail is not None:
                    details[-1]["tramark"] = tm_detail
                self._checkpoint(ck, rnd, glob, planner, rows, details, cdig)
                prog.advance(row)
                log.info("round %d: accuracy %.4f, eval loss %.4f, round time %.3f s (simulated), "
                         "%d ok, %d dropped", rnd, ev["accuracy"], ev["loss"], row["round_time_s"],
                         row["clients_ok"], row["clients_dropped"])  # fmt: skip
                if self.stop_after is not None and rnd >= self.stop_after:
                    log.info("stopping after round %d (stop_after)", rnd)
                    return {"rows": rows, "stopped": True}
        finally:
            prog.close()
        write_metrics(self.out, rows, details)
        bad = sorted(k for k, a in glob.items() if not np.all(np.isfinite(a)))
        if bad:  # cannot happen: updates with NaN/inf are dropped; never export one
            raise RuntimeError(f"the global adapter holds NaN/inf in {bad[:3]}; not exported")
        export_peft(bundle, glob, str(self.out / "adapter"))
        if tramark is not None:
            tramark.export(bundle, glob, self.out / "tramark")
        try:
            plot_metrics(self.out, rows)
        except Exception as e:  # the plot is a convenience
            log.warning("plot failed: %s", e)
        return {"rows": rows, "stopped": False}

    def _checkpoint(self, ck: Path, rnd, glob, planner, rows, details, cdig) -> None:
        arrs = {f"global/{k}": v for k, v in glob.items()}
        arrs.update({f"planner/{k}": v for k, v in planner.state_arrays().items()})
        name = f"round-{rnd:04d}.npz"
        _save_npz(ck / name, arrs)
        tm = getattr(self, "tramark", None)
        if tm is not None:
            tm.save(ck, rnd)
        st = {"round": rnd, "file": name, "config_digest": cdig, "rows": rows, "details": details}
        _atomic_write(ck / "state.json", jsonout.dumps(st).encode())
        for old in ck.glob("round-*.npz"):
            if old.name != name:
                old.unlink()
        if tm is not None:
            tm.prune(ck, rnd)
        write_metrics(self.out, rows, details)


def _arrays_record(arrays):
    from romsim.fl.apps import _arrays_out

    return _arrays_out(arrays)


def _row(rnd, ev, per_client, n_dropped, _extra, prev_sim, prev_e) -> dict:
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
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in CSV_FIELDS})
    _atomic_write(out / "metrics.csv", buf.getvalue().encode())
    _atomic_write(out / "metrics.json",
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


class _Progress:
    def __init__(self, total: int, done: int, enabled: bool):
        self.p = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        # on stderr: stdout carries only the JSON summary (``romsim fl run ... | jq``)
        self.p = Progress(TextColumn("[bold]FL rounds"), BarColumn(), MofNCompleteColumn(),
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
    from romsim.fl import apps

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
    run_simulation(server_app=server, client_app=apps.client_app,
                   num_supernodes=cfg.n_clients, backend_config=backend,
                   verbose_logging=sim.verbose)  # fmt: skip
    if input_errors:
        raise input_errors[0]
    if not result:
        raise RuntimeError(f"the federated run failed; see {out_p / 'log.txt'}")
    return result
