"""Flower records and message exchange: numpy arrays <-> ``ArrayRecord``, and the server's
:class:`Mailbox` (one message per client, replies keyed by client id, the ``hello`` discovery
of the SuperNodes). flwr is imported only when a record is built or a message sent."""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger("romsim.fl")


def arrays_in(rec) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` as numpy arrays."""
    return {k: v.numpy() for k, v in rec.items()}


def arrays_out(arrays: dict[str, np.ndarray]):
    """Numpy arrays as an ``ArrayRecord`` (C-contiguous copies where needed)."""
    from flwr.app import Array, ArrayRecord

    rec = ArrayRecord()
    for k, v in arrays.items():
        rec[k] = Array(np.ascontiguousarray(v))
    return rec


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    """Bytes of the arrays' data (what a message with them carries)."""
    return int(sum(a.nbytes for a in arrays.values()))


class Mailbox:
    """The server's side of the Message API: every message carries the run's FL config
    (``cfg_json``), so clients need no configuration of their own."""

    def __init__(self, grid, cfg_json: str, node_timeout_s: float = 300.0):
        self.grid = grid
        self.cfg_json = cfg_json
        self.node_timeout_s = node_timeout_s

    def config(self, **kw):
        """A ``ConfigRecord`` with the FL config and ``kw``."""
        from flwr.app import ConfigRecord

        return ConfigRecord({"fl-config": self.cfg_json, **kw})

    def send(self, node_ids: dict[int, int], mtype: str, make_content, rnd: int) -> dict:
        """Send ``make_content(cid)`` to each client's node and wait; the replies by client id
        (a client that did not answer is absent)."""
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

    def discover(self, n: int) -> tuple[dict[int, int], dict[int, str]]:
        """Wait (up to ``node_timeout_s``) for ``n`` SuperNodes and ask each its partition id
        and frozen-base digest: (node id by partition id 0..n-1, digest by partition id)."""
        from flwr.app import RecordDict

        t0 = time.time()
        while True:
            nodes = list(self.grid.get_node_ids())
            if len(nodes) >= n:
                break
            if time.time() - t0 > self.node_timeout_s:
                raise RuntimeError(f"only {len(nodes)} of {n} SuperNodes connected")
            time.sleep(1.0)
        tmp = {i: nid for i, nid in enumerate(nodes)}
        replies = self.send(tmp, "query",
                            lambda _c: RecordDict({"config": self.config(action="hello")}), 0)  # fmt: skip
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
        return {pid: mapping[pid] for pid in range(n)}, digests
