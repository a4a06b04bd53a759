"""Server-side strategy logic, independent of Flower and torch: which modules each sampled
client trains this round (from the device budgets the simulator computes), and how updates are
aggregated. The Flower ServerApp (:mod:`romsim.fl.apps`) drives it.

=========== ====================================== ==========================================
strategy    assignment                             aggregation
=========== ====================================== ==========================================
fedavg      the same top ``min_i k_i`` layers      layer-wise FedAvg (= FedAvg here)
gd-hla      GD-HLA pattern, ``k_i`` layers each    layer-wise FedAvg
rgd-hla     RGD-HLA draw per round                 layer-wise FedAvg
fim-hla     top ``k_i`` layers by gradient norm    layer-wise FedAvg
fed-pilot   knapsack on (layer, group) items,      STAgg (spatial-temporal, dynamic weights)
            IG-score values, SRAM capacity
=========== ====================================== ==========================================

``k_i`` is :attr:`Device.max_layers`: the most layers device i's SRAM can train.
"""

from __future__ import annotations

import numpy as np

from romsim.fl import allocation as A
from romsim.fl.aggregation import (
    ClientUpdate,
    STAggState,
    layerwise_fedavg,
    stagg,
    update_norms,
)
from romsim.fl.devices import GROUPS, Device, Module, layer_modules

SCORE_STRATEGIES = ("fim-hla", "fed-pilot")


def module_keys(modules) -> set[str]:
    return {f"{layer}.{kind}.{ab}" for layer, kind in modules for ab in ("A", "B")}


class Planner:
    def __init__(self, strategy_cfg, devices: list[Device], n_layers: int, seed: int):
        self.cfg = strategy_cfg
        self.devices = devices
        self.n_layers = n_layers
        self.seed = seed
        self.targets = devices[0].targets
        self.stagg_state = STAggState()
        self.last_norms: dict[str, float] = {}
        # the last global update (Neurotoxin's mask, AlignIns' optional reference); not in
        # the checkpoint: after a resume the first round has none
        self.last_update: dict[str, np.ndarray] = {}
        self.last_defense = None
        for d in devices:
            if d.model.n_layers != n_layers:
                raise ValueError(
                    f"device model has {d.model.n_layers} layers, the torch model {n_layers}"
                )

    # ------------------------------------------------------------------ sampling
    def sample(self, rnd: int) -> list[int]:
        n = len(self.devices)
        m = max(1, int(round(self.cfg.fraction * n)))
        if m >= n:
            return list(range(n))
        rng = np.random.default_rng([self.seed, rnd, 7])
        return sorted(rng.choice(n, size=m, replace=False).tolist())

    @property
    def needs_scores(self) -> bool:
        return self.cfg.name in SCORE_STRATEGIES

    # ------------------------------------------------------------------ assignment
    def assign(
        self, rnd: int, cids: list[int], scores: dict[int, dict[str, float]] | None = None
    ) -> dict[int, list[Module]]:
        budgets = [self.devices[c].max_layers for c in cids]
        name = self.cfg.name
        if name == "fedavg":
            alloc = A.homogeneous(self.n_layers, budgets)
        elif name == "gd-hla":
            alloc = A.gd_hla(self.cfg.pattern, self.n_layers, budgets)
        elif name == "rgd-hla":
            alloc = A.rgd_hla(self.cfg.pattern, self.n_layers, budgets, seed=self.seed * 1000 + rnd)
        elif name == "fim-hla":
            rows = np.array([self._layer_scores(scores.get(c, {})) for c in cids])
            s = rows if self.cfg.fim_per_client else rows.mean(axis=0)
            alloc = A.fim_hla(s, budgets)
        elif name == "fed-pilot":
            return {c: self._pilot(c, (scores or {}).get(c, {})) for c in cids}
        else:  # pragma: no cover - validated by the config
            raise ValueError(name)
        return {
            c: layer_modules(layers, self.targets) for c, layers in zip(cids, alloc, strict=True)
        }

    def _layer_scores(self, s: dict[str, float]) -> np.ndarray:
        out = np.zeros(self.n_layers)
        for mod, v in s.items():
            out[int(mod.split(".")[0])] += v
        return out

    def _items(self) -> list[tuple[int, str]]:
        groups = [g for g, kinds in GROUPS.items() if any(k in self.targets for k in kinds)]
        return [(layer, g) for layer in range(self.n_layers) for g in groups]

    def _pilot(self, cid: int, s: dict[str, float]) -> list[Module]:
        dev = self.devices[cid]
        items = self._items()
        local = np.zeros(len(items))
        glob = np.zeros(len(items))
        for i, (layer, g) in enumerate(items):
            for k in GROUPS[g]:
                local[i] += s.get(f"{layer}.{k}", 0.0)
                glob[i] += self.last_norms.get(f"{layer}.{k}.B", 0.0) + self.last_norms.get(
                    f"{layer}.{k}.A", 0.0
                )
        values = A.ig_scores(local, glob if glob.sum() > 0 else None, self.cfg.pilot_gamma)
        values = values + 1e-9 * np.arange(len(items))  # deterministic ties: higher layer wins
        item_bytes = {g: dev.group_item_bytes(g) for g in GROUPS}
        chosen = A.pilot_assign(items, values, item_bytes, dev.capacity_bytes, dev.fixed_bytes())
        mods = [(layer, k) for layer, g in chosen for k in GROUPS[g] if k in self.targets]
        assert dev.fits(mods), "knapsack result exceeds the device SRAM"
        return sorted(mods)

    # ------------------------------------------------------------------ aggregation
    @property
    def aggregation(self) -> str:
        if self.cfg.aggregation != "auto":
            return self.cfg.aggregation
        return "stagg" if self.cfg.name == "fed-pilot" else "layerwise"

    def aggregate(
        self,
        global_arrays: dict[str, np.ndarray],
        updates: list[ClientUpdate],
        n_attackers: int = 0,
        unlearn=None,
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """New global adapter; with ``[strategy] defense`` the robust spatial aggregate of
        :mod:`romsim.fl.defenses` replaces the layer-wise mean (STAgg then applies its
        temporal part on top); its report is in :attr:`last_defense`."""
        self.last_defense = None
        spatial = None
        kept = updates
        if self.cfg.defense != "none":
            from romsim.fl.defenses import defend

            res = defend(self.cfg, global_arrays, updates, n_attackers,
                         self.last_update or None, unlearn)  # fmt: skip
            self.last_defense = res
            spatial, kept = (res.arrays, res.counts), res.kept
        if self.aggregation == "stagg":
            new, counts, self.stagg_state = stagg(
                global_arrays, kept, self.stagg_state, self.cfg.stagg_mu, self.cfg.stagg_rho,
                spatial,
            )  # fmt: skip
        elif spatial is not None:
            new, counts = spatial
        else:
            new, counts = layerwise_fedavg(global_arrays, updates)
        self.last_norms = update_norms(global_arrays, new)
        self.last_update = {k: new[k].astype(np.float64) - global_arrays[k] for k in new}
        return new, counts

    # ------------------------------------------------------------------ checkpoint
    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {f"stagg/{k}": v for k, v in self.stagg_state.prev_update.items()}
        out.update({f"last/{k}": v for k, v in self.last_update.items()})
        if self.last_norms:
            keys = sorted(self.last_norms)
            out["norms/keys"] = np.array(keys)
            out["norms/values"] = np.array([self.last_norms[k] for k in keys])
        return out

    def load_state_arrays(self, arrs: dict[str, np.ndarray]) -> None:
        self.stagg_state = STAggState(
            {k[len("stagg/") :]: v for k, v in arrs.items() if k.startswith("stagg/")}
        )
        self.last_update = {k[len("last/") :]: v for k, v in arrs.items() if k.startswith("last/")}
        if "norms/keys" in arrs:
            self.last_norms = dict(
                zip(arrs["norms/keys"].tolist(), arrs["norms/values"].tolist(), strict=True)
            )
