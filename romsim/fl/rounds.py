"""The server's side of a federated round as small steps, each a function of the run's
:class:`ServerState` and the round's :class:`Round`:

    begin -> score -> assign -> train -> filter_replies -> aggregate -> evaluate

(:class:`romsim.fl.runner.ServerLoop` calls them, then checkpoints). ``score`` asks the sampled
clients for gradient-norm scores (FIM-HLA probe, Fed-piLot), ``assign`` plans the modules each
trains (with the server's Fisher scores on FIM-HLA refresh rounds), ``train`` sends the global
adapter (or each client's own view: TraMark's personalized adapter, HetLoRA's rank-truncated
one), ``filter_replies`` drops the clients that failed or sent a malformed update (with the
reason), ``aggregate`` applies the attackers' crafting, TraMark's region split and the
strategy's (defended) aggregation, ``evaluate`` scores the new global adapter and writes the
round's metrics row and details.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import RecordDict

from romsim import jsonout
from romsim.fl import train as T
from romsim.fl.aggregation import ClientUpdate, validate_update
from romsim.fl.attacks import Adversary, attacker_ids, auto_target, backdoor_test_set
from romsim.fl.checkpoint import read_checkpoint
from romsim.fl.data import load_dataset, server_holdout
from romsim.fl.defenses import detection
from romsim.fl.devices import make_devices
from romsim.fl.messages import Mailbox, arrays_in, arrays_out
from romsim.fl.metrics import round_row
from romsim.fl.strategy import Planner, fisher_holdout, module_keys

log = logging.getLogger("romsim.fl")


# ------------------------------------------------------------------------------ the run's state
@dataclass
class ServerState:
    """What every round needs: config, devices, the server's model, the strategy, the data the
    server holds, the adversary and TraMark; the global adapter and the metrics so far."""

    cfg: object
    devices: list
    bundle: object
    planner: Planner
    test: list  # the held-out items every round is scored on
    fim_set: list  # FIM-HLA's server-side held-out items
    aux: list  # MASA's server-side unlearning items
    adversary: Adversary
    bd_test: list | None  # triggered held-out items (backdoor success)
    tramark: object | None  # romsim.fl.tramark.TraMarkServer
    glob: dict[str, np.ndarray] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    details: list[dict] = field(default_factory=list)
    node_of: dict[int, int] = field(default_factory=dict)  # client id -> Flower node id

    def backdoor_rate(self) -> float:
        if not self.bd_test:
            return float("nan")
        return T.evaluate(self.bundle, self.bd_test, self.cfg.train.eval_batch)["accuracy"]

    def unlearn(self, arrays: dict[str, np.ndarray]) -> float:  # MASA's server-side step
        T.set_adapter(self.bundle, arrays)
        s = self.cfg.strategy
        return T.unlearn_loss(self.bundle, self.aux, s.masa_epochs, s.masa_batch, s.masa_lr,
                              self.cfg.run.seed)  # fmt: skip


def setup(cfg) -> ServerState:
    """Load the server's model and data and build the strategy, adversary and TraMark."""
    devices = make_devices(cfg)
    bundle = T.load_bundle(cfg.model, cfg.lora, cfg.train.torch_threads, cfg.train)
    planner = Planner(cfg.strategy, devices, bundle.n_layers, cfg.run.seed)
    ds = load_dataset(cfg.data)
    test = ds.test[: cfg.data.eval_examples]
    fim_set = fisher_holdout(cfg, ds.test)
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
    tramark = None
    if cfg.tramark.enabled:  # per-client watermarks (romsim.fl.tramark)
        from romsim.fl.tramark import TraMarkServer

        tramark = TraMarkServer(cfg)
    return ServerState(cfg, devices, bundle, planner, test, fim_set, aux, adversary, bd_test,
                       tramark)  # fmt: skip


def start(s: ServerState, ck: Path, resume: bool, out: Path) -> int:
    """The global adapter, strategy state and metrics to start from: the checkpoint in ``ck``
    (``resume``) or a fresh adapter. Returns the first round to run."""
    if not resume:
        s.glob = T.init_adapter(T.adapter_shapes(s.bundle), s.cfg.run.seed)
        return 1
    # the real model's shapes are the authority (the spec's were checked before Ray)
    st, glob, planner_arrays = read_checkpoint(ck, s.cfg, T.adapter_shapes(s.bundle))
    s.planner.load_state_arrays(planner_arrays)
    if s.tramark is not None:
        s.tramark.load(ck, st["round"], T.adapter_shapes(s.bundle))
    s.glob, s.rows, s.details = glob, st["rows"], st["details"]
    log.info("resuming %s after round %d", out, st["round"])
    return st["round"] + 1


def write_run_info(s: ServerState, out: Path) -> None:
    """``config.json`` and ``devices.json`` of the run."""
    (out / "config.json").write_text(jsonout.dumps(s.cfg.to_dict(), indent=2))
    (out / "devices.json").write_text(jsonout.dumps([d.describe() for d in s.devices], indent=2))


def connect(s: ServerState, mail: Mailbox) -> None:
    """Find every client's node; all must hold the server's frozen base (ROM image)."""
    s.node_of, digests = mail.discover(s.cfg.n_clients)
    bad = {c: d for c, d in digests.items() if d != s.bundle.digest}
    if bad:
        raise RuntimeError(f"clients {sorted(bad)} hold a different frozen base (ROM image) "
                           f"than the server ({s.bundle.digest})")  # fmt: skip
    log.info("%d clients, frozen base digest %s on all", len(s.node_of), s.bundle.digest)


def base_round(s: ServerState) -> None:
    """Round 0: the un-tuned base's metrics row."""
    T.set_adapter(s.bundle, s.glob)
    ev = T.evaluate(s.bundle, s.test, s.cfg.train.eval_batch)
    s.rows.append(round_row(0, ev, [], 0, 0.0, 0.0))
    s.rows[-1]["backdoor_success"] = s.backdoor_rate()
    log.info("round 0 (base): accuracy %.4f, eval loss %.4f", ev["accuracy"], ev["loss"])


# ------------------------------------------------------------------------------ one round
@dataclass
class Round:
    """What one round's steps hand on to the next."""

    rnd: int
    cids: list[int]  # the sampled clients
    nodes: dict[int, int]  # their Flower node ids
    t0: float  # host time the round began
    personal: dict | None = None  # TraMark: each client's own adapter record instead of glob's
    scores: dict[int, dict[str, float]] = field(default_factory=dict)
    probe: dict[int, dict[str, float]] = field(default_factory=dict)  # the probe's device cost
    assign: dict = field(default_factory=dict)  # client id -> [(layer, kind), ...]
    replies: dict = field(default_factory=dict)  # client id -> the train reply
    updates: list[ClientUpdate] = field(default_factory=list)
    per_client: list[dict] = field(default_factory=list)  # the kept clients' metrics
    dropped: list[dict] = field(default_factory=list)  # {"round", "cid", "reason"}
    bad_ids: list[int] = field(default_factory=list)  # the attackers among the kept clients
    attack_notes: list[dict] = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # client id -> its arrays as trained
    defense_rep: dict | None = None
    det: dict = field(default_factory=dict)  # detection precision/recall
    row: dict = field(default_factory=dict)


def begin(s: ServerState, rnd: int) -> Round:
    """Sample the round's clients."""
    t0 = time.time()
    cids = s.planner.sample(rnd)
    r = Round(rnd, cids, {c: s.node_of[c] for c in cids}, t0)
    if s.tramark is not None and s.tramark.active:
        r.personal = {c: arrays_out(s.tramark.personal(c, s.glob)) for c in cids}
    return r


def score(s: ServerState, mail: Mailbox, r: Round) -> None:
    """The clients' gradient-norm scores, when the strategy needs them; a client that fails
    here is left out of the scores only."""
    if not s.planner.needs_scores:
        return
    gl_rec = arrays_out(s.glob)
    reps = mail.send(r.nodes, "query", lambda c: RecordDict({
        "config": mail.config(action="score", round=r.rnd, cid=c),
        "global": gl_rec if r.personal is None else r.personal[c]}), r.rnd)  # fmt: skip
    for c in r.cids:
        rep = reps.get(c)
        if rep is None or rep.has_error():
            why = "no reply" if rep is None else rep.error.reason
            log.warning("round %d: client %d dropped from scoring: %s", r.rnd, c, why)
            continue
        sc = rep.content["scores"]
        r.scores[c] = dict(zip(sc["keys"], sc["values"], strict=True))
        r.probe[c] = dict(rep.content["metrics"])


def assign(s: ServerState, r: Round) -> None:
    """The modules each client trains (FIM-HLA refresh rounds: from the server's Fisher scores
    on its held-out items)."""
    fisher = None
    if s.planner.fisher_round(r.rnd):
        t_f = time.time()
        T.set_adapter(s.bundle, s.glob)
        fisher = T.fisher_scores(s.bundle, s.fim_set)
        log.info("round %d: server Fisher scores on %d held-out items, %.1f s",
                 r.rnd, len(s.fim_set), time.time() - t_f)  # fmt: skip
    r.assign = s.planner.assign(r.rnd, r.cids, r.scores, fisher)
    if s.planner.fim_note is not None:
        log.info("round %d: FIM-HLA groups %s", r.rnd, s.planner.fim_note["groups"])


def train(s: ServerState, mail: Mailbox, r: Round) -> None:
    """Send each client the adapter it starts from and its modules; collect the replies."""
    gl_rec = arrays_out(s.glob)
    sent = r.personal  # per-client adapters instead of glob: TraMark's, or HetLoRA's
    views = s.planner.client_globals(s.glob, r.cids)  # rank-truncated copies
    if sent is None and views:
        sent = {c: arrays_out(views[c]) if c in views else gl_rec for c in r.cids}
    r.replies = mail.send(r.nodes, "train", lambda c: RecordDict({
        "config": mail.config(round=r.rnd, cid=c,
                              modules=[f"{m[0]}.{m[1]}" for m in r.assign[c]]),
        "global": gl_rec if sent is None else sent[c]}), r.rnd)  # fmt: skip


def _reply_update(s: ServerState, r: Round, c: int):
    """Client ``c``'s update and metrics, or the reason it is dropped."""
    rep = r.replies.get(c)
    if rep is None:
        return None, None, "no reply"
    if rep.has_error():
        return None, None, f"client error: {rep.error.reason}"
    try:
        arrays = arrays_in(rep.content["adapter"])
        m = dict(rep.content["metrics"])
        upd = ClientUpdate(c, float(m["num-examples"]), arrays)
        return upd, m, validate_update(upd, s.glob, module_keys(r.assign[c]))
    except Exception as e:  # malformed reply
        return None, None, f"malformed reply: {type(e).__name__}: {e}"


def filter_replies(s: ServerState, r: Round) -> None:
    """Keep the valid updates (each client's metrics with its probe's cost added); drop the
    others with their reason."""
    for c in r.cids:
        upd, m, reason = _reply_update(s, r, c)
        if reason:
            log.warning("round %d: client %d dropped: %s", r.rnd, c, reason)
            r.dropped.append({"round": r.rnd, "cid": c, "reason": reason})
            continue
        pm = r.probe.get(c, {})
        m["device_time_s"] += pm.get("probe_time_s", 0.0)
        m["energy_j"] += pm.get("probe_energy_j", 0.0)
        m["bytes_down"] += pm.get("bytes_down", 0.0)
        m["trained_layers"] = len({x[0] for x in r.assign[c]})
        m["cid"] = c
        m["class"] = s.devices[c].klass
        r.updates.append(upd)
        r.per_client.append(m)


def aggregate(s: ServerState, r: Round) -> None:
    """The attackers' crafting, TraMark's main region only, then the strategy's (defended)
    aggregation into the new global adapter."""
    r.raw = {u.cid: u.arrays for u in r.updates}  # as trained (TraMark keeps its W)
    r.bad_ids = s.adversary.ids(r.rnd, [u.cid for u in r.updates])
    updates = r.updates
    if r.bad_ids:
        updates, r.attack_notes = s.adversary.craft(r.rnd, s.glob, updates,
                                                    s.planner.last_update)  # fmt: skip
    if s.tramark is not None:  # aggregate the main region only
        updates = s.tramark.strip(updates, s.glob)
    r.det = {"precision": float("nan"), "recall": float("nan")}
    if not updates:
        log.warning("round %d: every client dropped; the global adapter is unchanged", r.rnd)
        return
    s.glob, _counts = s.planner.aggregate(s.glob, updates, len(r.bad_ids), s.unlearn)
    if s.planner.last_defense is not None:
        r.defense_rep = s.planner.last_defense.report
        r.det = detection(s.planner.last_defense.flagged, r.bad_ids, [u.cid for u in updates])
        log.info("round %d: %s kept %s, flagged %s (attackers %s), %.2f s",
                 r.rnd, s.cfg.strategy.defense, r.defense_rep["kept"],
                 r.defense_rep["flagged"], r.bad_ids, r.defense_rep["seconds"])  # fmt: skip


def evaluate(s: ServerState, r: Round) -> None:
    """Score the new global adapter; append the round's metrics row and details."""
    cfg = s.cfg
    T.set_adapter(s.bundle, s.glob)
    ev = T.evaluate(s.bundle, s.test, cfg.train.eval_batch)
    prev = s.rows[-1]
    row = round_row(r.rnd, ev, r.per_client, len(r.dropped), prev["sim_time_s"], prev["energy_j"])
    row["host_wall_s"] = time.time() - r.t0
    row["backdoor_success"] = s.backdoor_rate()
    row["detect_precision"] = r.det["precision"]
    row["detect_recall"] = r.det["recall"]
    row["defense_s"] = r.defense_rep["seconds"] if r.defense_rep else 0.0
    tm_detail = None
    if s.tramark is not None:
        tm_row, tm_detail = s.tramark.end_round(r.rnd, s.bundle, s.glob, r.raw, s.test,
                                                cfg.train.eval_batch, ev["accuracy"])  # fmt: skip
        row.update(tm_row)
    s.rows.append(row)
    s.details.append({"round": r.rnd, "clients": r.per_client, "dropped": r.dropped,
                      "assignment": {str(c): [f"{a}.{b}" for a, b in r.assign[c]]
                                     for c in r.cids},
                      "attackers": r.bad_ids, "attack": r.attack_notes,
                      "defense": r.defense_rep})  # fmt: skip
    if s.planner.fim_note is not None:  # a FIM-HLA refresh: scores, groups, prior
        s.details[-1]["fim"] = s.planner.fim_note
    if tm_detail is not None:
        s.details[-1]["tramark"] = tm_detail
    r.row = row


# ------------------------------------------------------------------------------ the end
def export(s: ServerState, out: Path) -> None:
    """``adapter/`` (the final global adapter, PEFT format) and, with TraMark, ``tramark/``."""
    bad = sorted(k for k, a in s.glob.items() if not np.all(np.isfinite(a)))
    if bad:  # cannot happen: updates with NaN/inf are dropped; never export one
        raise RuntimeError(f"the global adapter holds NaN/inf in {bad[:3]}; not exported")
    T.export_peft(s.bundle, s.glob, str(out / "adapter"))
    if s.tramark is not None:
        s.tramark.export(s.bundle, s.glob, out / "tramark")
