"""Cost primitives of the cycle-approximate performance model.

An op is a set of *stages* that stream into each other (broadcast of activations, ROM reads,
MACs, reduction, SRAM traffic, vector work). A streamed op costs its fixed latency (pipeline fill,
mesh hops, handshakes) plus its slowest stage, not the sum of the stages and not a perfect overlap
of everything: stages of one op overlap, different ops run one after another (the data of op i+1
depends on op i). Each stage load is linear in the context length ``ctx`` so decode can be
evaluated for a whole vector of context lengths at once: ``load = const + per_ctx * ctx``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from romsim.perf.actions import check_action

RESOURCES = ("rom", "mac", "bcast", "reduce", "h_mac", "sram", "vec", "sfu", "link", "offchip")


@dataclass
class Op:
    name: str
    group: str  # breakdown bucket: qkv, attn_score, attn_value, o, gate_up, down, lora, norm, ...
    latency_cycles: float
    # resource -> (const cycles, cycles per context token)
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)
    # events for energy: name -> (const count, count per context token)
    events: dict[str, tuple[float, float]] = field(default_factory=dict)

    def add(self, resource: str, const: float, per_ctx: float = 0.0) -> None:
        c0, c1 = self.stages.get(resource, (0.0, 0.0))
        self.stages[resource] = (c0 + const, c1 + per_ctx)

    def count(self, event: str, const: float, per_ctx: float = 0.0) -> None:
        check_action(event)
        c0, c1 = self.events.get(event, (0.0, 0.0))
        self.events[event] = (c0 + const, c1 + per_ctx)


class OpTable:
    """Ops of one decoder layer (plus per-token ops) as arrays, for vectorized evaluation."""

    def __init__(self, ops: list[Op]):
        self.ops = ops
        r = {name: i for i, name in enumerate(RESOURCES)}
        n = len(ops)
        self.lat = np.array([o.latency_cycles for o in ops], dtype=np.float64)
        self.c0 = np.zeros((n, len(RESOURCES)))
        self.c1 = np.zeros((n, len(RESOURCES)))
        for i, o in enumerate(ops):
            for res, (a, b) in o.stages.items():
                self.c0[i, r[res]] = a
                self.c1[i, r[res]] = b
        self.names = [o.name for o in ops]
        self.groups = [o.group for o in ops]

    def op_cycles(self, ctx: np.ndarray) -> np.ndarray:
        """Cycles of every op for every context length: shape (n_ops, len(ctx))."""
        loads = self.c0[:, :, None] + self.c1[:, :, None] * ctx[None, None, :]
        return self.lat[:, None] + loads.max(axis=1)

    def busy(self, ctx: np.ndarray) -> np.ndarray:
        """Busy cycles per resource, summed over ops: shape (n_resources, len(ctx))."""
        return self.c0.sum(axis=0)[:, None] + self.c1.sum(axis=0)[:, None] * ctx[None, :]
