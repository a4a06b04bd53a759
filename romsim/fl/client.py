"""The Flower ClientApp: what a federated client does (Message API of flwr 1.x). The same
``client_app`` runs in Flower's simulation engine (``romsim fl run``) and on a SuperNode of the
deployment engine (``romsim.fl.apps:client_app``, docs/federated.md).

A client needs no configuration of its own: every message carries the run's FL config; a client
knows only its ``partition-id`` (node config), which picks its device and its data partition.

Messages
--------
- ``query`` ``hello``: the client answers its partition id and the digest of its frozen base
  (the ROM image must be the same bits on every client).
- ``query`` ``score``: gradient-norm scores per LoRA module on a probe batch (FIM-HLA,
  Fed-piLot), plus the device time/energy of that probe.
- ``train``: global adapter in, the assigned modules' trained arrays out, with metrics: device
  time (s) and energy (J) from the romsim perf model, bytes received and sent, train loss.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from romsim.fl.messages import arrays_in, arrays_out, nbytes
from romsim.fl.quiet import quiet_third_party

quiet_third_party()  # before flwr/torch load here or in a Ray worker
log = logging.getLogger("romsim.fl")


_CLIENT: dict = {}


def _client_state(cfg_json: str, partition_id: int):
    """Per-process cache: config, bundle, data partition and device of this client."""
    key = (cfg_json, partition_id)
    if _CLIENT.get("key") == key:
        return _CLIENT["state"]
    from romsim.fl.attacks import attacker_ids, auto_target, poison_examples
    from romsim.fl.config import fl_config_from_dict
    from romsim.fl.data import load_dataset, partition, server_holdout
    from romsim.fl.devices import make_devices
    from romsim.fl.train import load_bundle

    cfg = fl_config_from_dict(json.loads(cfg_json))
    bundle = load_bundle(cfg.model, cfg.lora, cfg.train.torch_threads, cfg.train)
    ds = load_dataset(cfg.data)
    pool, _aux = server_holdout(ds.train, cfg.masa_aux_count())
    parts = partition(pool, cfg.n_clients, cfg.data.partition, cfg.data.alpha, cfg.data.seed)
    device = make_devices(cfg)[partition_id]
    examples = [pool[i] for i in parts[partition_id]]
    state = {"cfg": cfg, "bundle": bundle, "examples": examples, "device": device,
             "attacker": None, "poisoned": None}  # fmt: skip
    att = attacker_ids(cfg.attackers, cfg.n_clients, cfg.run.seed).get(partition_id)
    if att is not None:
        state["attacker"] = att
        if att.kind == "backdoor":
            target = att.target or auto_target(pool)
            state["poisoned"], _ = poison_examples(
                examples, att.poison_fraction, att.trigger, target, att.trigger_position,
                seed=_seed(cfg, 0, partition_id, 3),
            )  # fmt: skip
    _CLIENT["key"] = key
    _CLIENT["state"] = state
    return state


def _partition_id(context) -> int:
    nc = context.node_config
    for k in ("partition-id", "partition_id"):
        if k in nc:
            return int(nc[k])
    raise KeyError("node config has no partition-id (start the SuperNode with "
                   "--node-config 'partition-id=<i> num-partitions=<n>')")  # fmt: skip


def _fault(cfg, cid: int, rnd: int) -> str | None:
    for f in cfg.faults:
        if f.cid == cid and f.round in (rnd, 0):
            return f.kind
    return None


def client_query(msg, context):
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    c = msg.content["config"]
    pid = _partition_id(context)
    st = _client_state(str(c["fl-config"]), pid)
    if c["action"] == "hello":
        reply = RecordDict(
            {"info": ConfigRecord({"partition-id": pid, "digest": st["bundle"].digest})}
        )
        return Message(reply, reply_to=msg)
    from romsim.fl.devices import all_modules
    from romsim.fl.train import grad_scores, set_adapter

    cfg, bundle, dev = st["cfg"], st["bundle"], st["device"]
    glob = arrays_in(msg.content["global"])
    set_adapter(bundle, glob)
    rnd = int(c["round"])
    scores = grad_scores(bundle, st["examples"], cfg.strategy.score_batches, cfg.train.batch,
                         seed=_seed(cfg, rnd, pid, 1))  # fmt: skip
    # the probe trains nothing but needs every module's gradient: one step per batch
    every = all_modules(bundle.n_layers, bundle.targets)
    n = cfg.strategy.score_batches
    metrics = {"probe_time_s": n * dev.step_time_s(every),
               "probe_energy_j": n * dev.step_energy_j(every),
               "bytes_down": nbytes(glob)}  # fmt: skip
    keys = sorted(scores)
    reply = RecordDict({
        "scores": ConfigRecord({"keys": keys, "values": [float(scores[k]) for k in keys]}),
        "metrics": MetricRecord(metrics),
    })  # fmt: skip
    return Message(reply, reply_to=msg)


def _seed(cfg, rnd: int, cid: int, salt: int) -> int:
    return int(np.random.SeedSequence([cfg.run.seed, rnd, cid, salt]).generate_state(1)[0])


def client_train(msg, context):
    from flwr.app import Message, MetricRecord, RecordDict

    from romsim.fl.train import local_train, set_adapter

    c = msg.content["config"]
    pid = _partition_id(context)
    st = _client_state(str(c["fl-config"]), pid)
    cfg, bundle, dev = st["cfg"], st["bundle"], st["device"]
    rnd = int(c["round"])
    modules = [(int(s.split(".")[0]), s.split(".")[1]) for s in c["modules"]]
    fault = _fault(cfg, pid, rnd)
    if fault == "raise":
        raise RuntimeError(f"injected fault: client {pid} fails in round {rnd}")
    glob = arrays_in(msg.content["global"])
    set_adapter(bundle, glob)
    steps = cfg.train.steps_for(len(st["examples"]))
    att = st["attacker"]
    examples = st["examples"]
    if st["poisoned"] is not None and rnd >= att.from_round:
        examples = st["poisoned"]  # the backdoor attacker trains on its poisoned data
    t0 = time.perf_counter()
    arrays, stats = local_train(
        bundle, examples, modules, steps, cfg.train.batch, cfg.train.lr,
        seed=_seed(cfg, rnd, pid, 0), weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm,
    )  # fmt: skip
    host_s = time.perf_counter() - t0
    if fault == "nan":
        k = next(iter(arrays))
        arrays[k] = arrays[k].copy()
        arrays[k].flat[0] = np.nan
    elif fault == "shape":
        k = next(iter(arrays))
        arrays[k] = np.zeros((arrays[k].shape[0] + 1, arrays[k].shape[1]), np.float32)
    down_b, up_b = nbytes(glob), nbytes(arrays)
    step_s = dev.step_time_s(modules)
    compute_s = steps * step_s
    metrics = {
        "num-examples": float(len(st["examples"])),
        "train_loss": stats["train_loss"],
        "compute_time_s": compute_s,
        "comm_time_s": dev.link.down_s(down_b) + dev.link.up_s(up_b),
        "device_time_s": compute_s + dev.link.down_s(down_b) + dev.link.up_s(up_b),
        "energy_j": steps * dev.step_energy_j(modules),  # the perf model's step energy
        "bytes_down": float(down_b),
        "bytes_up": float(up_b),
        "sram_needed_bytes": dev.sram_needed_bytes(modules),
        "sram_capacity_bytes": dev.capacity_bytes,
        "local_steps": float(steps),
        "host_train_s": host_s,
    }
    reply = RecordDict({"adapter": arrays_out(arrays), "metrics": MetricRecord(metrics)})
    return Message(reply, reply_to=msg)


def _make_client_app():
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.query()(client_query)
    app.train()(client_train)
    return app


client_app = _make_client_app()
quiet_third_party()  # again, ahead of the filters importing flwr added
