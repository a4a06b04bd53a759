"""Server-side strategy logic, independent of Flower and torch: which modules each sampled
client trains this round (from the device budgets the simulator computes), and how updates are
aggregated. The Flower ServerApp (:mod:`romsim.fl.apps`) drives it.

=========== ============================================ ====================================
strategy    assignment                                   aggregation (``auto``)
=========== ============================================ ====================================
fedavg      the same top ``min_i k_i`` layers (romsim's)  layer-wise mean
gd-hla      GD-HLA pattern, ``k_i`` layers each           layer-wise mean
rgd-hla     ``k_i`` layers sampled, p = GD-HLA counts     layer-wise mean
fim-hla     as published: ``k_i`` layers sampled from     layer-wise mean
            the Fisher-group prior on refresh rounds,
            the RGD prior otherwise (``fim_mode =
            "probe-topk"``: top ``k_i`` by client probe)
fedra       ``k_i`` layers uniformly at random            layer-wise mean
exclusive   all layers, only clients with ``k_i = n``     layer-wise mean
straggler   the same ``min k`` layers spread over depth   layer-wise mean
hetlora     all layers at rank ~ ``rank * k_i / n``       HetLoRA (sparsity-weighted, padded)
fed-pilot   knapsack on (layer, group) items,             STAgg (spatial-temporal)
            IG-score values, SRAM capacity
=========== ============================================ ====================================

The layer-wise mean is unweighted per key (``aggregation_weights = "uniform"``, the official
Fed-HeLLo code) or weighted by the clients' training examples (``"examples"``).
``k_i`` is :attr:`Device.max_layers`: the most layers device i's SRAM can train.
"""

from __future__ import annotations

import numpy as np

from romsim.errors import RomsimInputError
from romsim.fl import allocation as A
from romsim.fl.aggregation import (
    ClientUpdate,
    STAggState,
    hetlora_aggregate,
    layerwise_fedavg,
    stagg,
    truncate_rank,
    update_norms,
)
from romsim.fl.devices import GROUPS, Device, Module, layer_modules

SCORE_STRATEGIES = ("fim-hla", "fed-pilot")  # may need the client probe (fim-hla: probe-topk)


def module_keys(modules) -> set[str]:
    return {f"{layer}.{kind}.{ab}" for layer, kind in modules for ab in ("A", "B")}


def class_budgets(devices: list[Device]) -> list[int]:
    """One layer budget per device class (class order): the capacity groups whose GD-HLA
    counts make RGD-HLA's prior (the official groups are 6, 9 and 12 of 12 layers)."""
    seen: dict[str, int] = {}
    for d in devices:
        seen.setdefault(d.klass, d.max_layers)
    return list(seen.values())


def check_strategy(cfg, devices: list[Device]) -> None:
    """Rules between the strategy and the rest of the config, checked before Ray starts."""
    s = cfg.strategy
    n = devices[0].model.n_layers
    if s.name == "exclusive" and not any(d.max_layers >= n for d in devices):
        best = max(d.max_layers for d in devices)
        raise RomsimInputError("strategy.name", s.name,
                               f"needs a device that can train all {n} layers (largest budget: {best})")  # fmt: skip
    if uses_server_fisher(s):
        spare = cfg.data.n_test - cfg.data.eval_examples
        if spare < s.fim_samples:
            raise RomsimInputError("strategy.fim_samples", s.fim_samples,
                                   "the server's Fisher scores use held-out items that are not "
                                   f"scored each round: data.n_test - data.eval_examples = {spare}")  # fmt: skip


def uses_server_fisher(strategy_cfg) -> bool:
    return strategy_cfg.name == "fim-hla" and strategy_cfg.fim_mode == "server"


def fisher_holdout(cfg, test: list) -> list:
    """The server's held-out Fisher set: the ``fim_samples`` test items after the
    ``eval_examples`` scored each round (never scored, never in a client's data)."""
    e = cfg.data.eval_examples
    return test[e : e + cfg.strategy.fim_samples]


class Planner:
    def __init__(self, strategy_cfg, devices: list[Device], n_layers: int, seed: int):
        self.cfg = strategy_cfg
        self.devices = devices
        self.n_layers = n_layers
        self.seed = seed
        self.targets = devices[0].targets
        self.rank = int(devices[0].chip.lora.rank)
        self.class_budgets = class_budgets(devices)
        self.stagg_state = STAggState()
        self.last_norms: dict[str, float] = {}
        # the last global update (Neurotoxin's mask, AlignIns' optional reference); not in
        # the checkpoint: after a resume the first round has none
        self.last_update: dict[str, np.ndarray] = {}
        self.last_defense = None
        # FIM-HLA: the Fisher prior kept until the next refresh (fim_persist; checkpointed)
        # and what the last refresh found (for the round's metrics details)
        self.fim_prior: np.ndarray | None = None
        self.fim_note: dict | None = None
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
            cids = list(range(n))
        else:
            rng = np.random.default_rng([self.seed, rnd, 7])
            cids = sorted(rng.choice(n, size=m, replace=False).tolist())
        if self.cfg.name == "exclusive":  # the others are sampled but sit the round out
            cids = [c for c in cids if self.devices[c].max_layers >= self.n_layers]
        return cids

    @property
    def needs_scores(self) -> bool:
        """The round needs the clients' gradient-norm probe (Fed-piLot, FIM-HLA probe-topk)."""
        if self.cfg.name == "fim-hla":
            return self.cfg.fim_mode == "probe-topk"
        return self.cfg.name in SCORE_STRATEGIES

    def fisher_round(self, rnd: int) -> bool:
        """FIM-HLA refreshes its prior from the server's Fisher scores in this round: the
        official condition ``t > fim_prior_epoch - 1 and t % fim_every_iter == 0`` with
        ``t = rnd - 1`` (official rounds count from 0): rounds 51, 101, ... for (50, 50)."""
        if not uses_server_fisher(self.cfg):
            return False
        t = rnd - 1
        return t >= self.cfg.fim_prior_rounds and t % self.cfg.fim_every == 0

    def client_rank(self, cid: int) -> int:
        """HetLoRA rank of client ``cid`` (the full rank for the other strategies)."""
        if self.cfg.name != "hetlora":
            return self.rank
        return A.hetlora_ranks(self.rank, self.n_layers, [self.devices[cid].max_layers])[0]

    def client_globals(self, glob: dict[str, np.ndarray], cids) -> dict[int, dict[str, np.ndarray]]:
        """Per-client copies of the global adapter where a client must not get the plain one:
        HetLoRA's rank truncation (a client absent here gets ``glob``)."""
        if self.cfg.name != "hetlora":
            return {}
        return {c: truncate_rank(glob, self.client_rank(c)) for c in cids
                if self.client_rank(c) < self.rank}  # fmt: skip

    # ------------------------------------------------------------------ assignment
    def rgd_prior(self) -> np.ndarray:
        return A.gd_hla_prior(self.cfg.pattern, self.n_layers, self.class_budgets)

    def round_prior(self, rnd: int, fisher: dict[str, float] | None) -> np.ndarray:
        """FIM-HLA's sampling prior in round ``rnd``: the Fisher-group prior on a refresh
        round (and, with ``fim_persist``, until the next one), else the RGD-HLA prior."""
        if self.fisher_round(rnd):
            if fisher is None:
                raise ValueError(f"round {rnd} is a Fisher refresh: pass the server's scores")
            layer = self._layer_scores(fisher)
            p = A.fim_prior(layer)
            self.fim_note = {"round": rnd, "layer_scores": layer.tolist(),
                             "groups": A.fisher_groups(layer).tolist(), "prior": p.tolist()}  # fmt: skip
            if self.cfg.fim_persist:
                self.fim_prior = p
            return p
        self.fim_note = None
        if self.cfg.fim_persist and self.fim_prior is not None:
            return self.fim_prior
        return self.rgd_prior()

    def assign(
        self,
        rnd: int,
        cids: list[int],
        scores: dict[int, dict[str, float]] | None = None,
        fisher: dict[str, float] | None = None,
    ) -> dict[int, list[Module]]:
        """Modules per sampled client. ``scores``: the clients' probe (Fed-piLot, FIM-HLA
        probe-topk); ``fisher``: the server's Fisher scores per module on a FIM refresh round
        (:func:`romsim.fl.train.fisher_scores`)."""
        budgets = [self.devices[c].max_layers for c in cids]
        name = self.cfg.name
        rng_seed = [self.seed, rnd, 11]  # one stream per round: resume draws the same layers
        if name == "fedavg":
            alloc = A.homogeneous(self.n_layers, budgets)
        elif name == "gd-hla":
            alloc = A.gd_hla(self.cfg.pattern, self.n_layers, budgets)
        elif name == "rgd-hla":
            alloc = A.rgd_hla(self.cfg.pattern, self.n_layers, budgets, rng_seed,
                              prior_budgets=self.class_budgets)  # fmt: skip
        elif name == "fim-hla" and self.cfg.fim_mode == "probe-topk":
            scores = scores or {}
            rows = np.array([self._layer_scores(scores.get(c, {})) for c in cids])
            s = rows if self.cfg.fim_per_client else rows.mean(axis=0)
            alloc = A.fim_topk(s, budgets)
        elif name == "fim-hla":
            p = self.round_prior(rnd, fisher)
            alloc = A.sample_layers(p, budgets, np.random.default_rng(rng_seed))
        elif name == "fedra":
            alloc = A.fedra(self.n_layers, budgets, rng_seed)
        elif name == "straggler":  # the weakest device of the whole federation, fixed layers
            k = min(d.max_layers for d in self.devices)
            alloc = A.straggler(self.n_layers, [k] * len(cids))
        elif name == "exclusive":
            alloc = A.exclusive(self.n_layers, budgets)
        elif name == "hetlora":
            alloc = [list(range(self.n_layers)) for _ in cids]
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
        return {"fed-pilot": "stagg", "hetlora": "hetlora"}.get(self.cfg.name, "layerwise")

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
                spatial, self.cfg.aggregation_weights,
            )  # fmt: skip
        elif spatial is not None:
            new, counts = spatial
        elif self.aggregation == "hetlora":
            ranks = {u.cid: self.client_rank(u.cid) for u in updates}
            new, counts = hetlora_aggregate(global_arrays, updates, ranks)
        else:
            new, counts = layerwise_fedavg(global_arrays, updates, self.cfg.aggregation_weights)
        self.last_norms = update_norms(global_arrays, new)
        self.last_update = {k: new[k].astype(np.float64) - global_arrays[k] for k in new}
        return new, counts

    # ------------------------------------------------------------------ checkpoint
    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {f"stagg/{k}": v for k, v in self.stagg_state.prev_update.items()}
        out.update({f"last/{k}": v for k, v in self.last_update.items()})
        if self.fim_prior is not None:
            out["fim/prior"] = np.asarray(self.fim_prior, dtype=np.float64)
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
        self.fim_prior = np.asarray(arrs["fim/prior"], np.float64) if "fim/prior" in arrs else None
        if "norms/keys" in arrs:
            self.last_norms = dict(
                zip(arrs["norms/keys"].tolist(), arrs["norms/values"].tolist(), strict=True)
            )
