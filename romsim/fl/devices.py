"""Federated clients as devices: a chip config (preset or TOML + overrides) with its SRAM budget
and clock, plus a network link. The romsim performance model decides what a device can train
(SRAM) and what one local step costs (time, energy). Torch-free.

Units of allocation are *modules* ``(layer, kind)`` with ``kind`` one of the LoRA targets
(``q k v o gate up down``). Whole-layer strategies (FedAvg, Fed-HeLLo HLA) assign every target
of a layer; Fed-piLot assigns (layer, group) items, groups ``attn`` = q k v o, ``mlp`` = gate up
down.

SRAM a client needs for an assignment (bytes), built from :mod:`romsim.perf.memory`:

- the KV cache of one training sequence (``seq_len`` tokens),
- LoRA weights of *every* layer (the client downloads the whole global adapter and runs it in
  the forward pass; untrained ones are frozen),
- gradient + Adam state (``GRAD_BYTES + ADAM_STATE_BYTES`` per trained parameter),
- the activations the backward pass keeps for each trained layer, split into an attention share
  and an MLP share that sum to :func:`train_saved_act_bytes_per_token` per layer.

For whole layers this equals ``train_sram_bytes(layers=k)`` plus the frozen adapters' weights
(a unit test holds the identity). Activations of frozen layers between trained ones are not
counted (recomputed in the backward pass, as the perf model assumes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from romsim.config import ChipConfig, chip_from_dict, load_chip
from romsim.errors import RomsimInputError
from romsim.modelspec import ModelSpec, load_model, spec_from_config
from romsim.perf.memory import (
    ACT_SAVE_BYTES,
    ADAM_STATE_BYTES,
    GRAD_BYTES,
    kv_bytes_per_token,
    lora_params,
    train_sram_bytes,
)

ATTN_KINDS = ("q", "k", "v", "o")
MLP_KINDS = ("gate", "up", "down")
GROUPS = {"attn": ATTN_KINDS, "mlp": MLP_KINDS}

Module = tuple[int, str]  # (layer index, LoRA target kind)


@dataclass(frozen=True)
class Link:
    uplink_bps: float = 20e6  # bits per second
    downlink_bps: float = 100e6
    latency_s: float = 0.05

    def up_s(self, nbytes: float) -> float:
        return self.latency_s + 8 * nbytes / self.uplink_bps

    def down_s(self, nbytes: float) -> float:
        return self.latency_s + 8 * nbytes / self.downlink_bps


@dataclass(frozen=True)
class DeviceClassSpec:
    """One device class from the FL config."""

    name: str
    chip: str = "roma-3b-w4"  # preset name or chip TOML path
    count: int = 1
    overrides: dict = field(default_factory=dict)
    link: Link = Link()


def device_chip(
    spec: DeviceClassSpec, model: str, quant: str, rank: int, alpha: float, targets: tuple[str, ...]
) -> ChipConfig:
    """The chip of a device class running ``model`` with the run's LoRA settings."""
    base = load_chip(spec.chip)
    data = base.model_dump()
    data["name"] = spec.name
    data["model"] = model
    data["quant"] = quant
    data["lora"] = dict(data["lora"], rank=rank, alpha=alpha, targets=tuple(targets))
    chip = chip_from_dict(data, source=f"devices.{spec.name}")
    if spec.overrides:
        chip = chip.with_overrides(**spec.overrides)
    return chip


@dataclass
class Device:
    """One client: its chip, link and the perf model's verdicts."""

    cid: int
    klass: str
    chip: ChipConfig
    link: Link
    model: ModelSpec
    seq_len: int
    batch: int

    # ------------------------------------------------------------------ SRAM
    @property
    def capacity_bytes(self) -> float:
        return float(self.chip.sram.total_bytes)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.chip.lora.targets)

    def module_params(self, kind: str) -> int:
        return lora_params(self.model, self.chip.lora.rank, (kind,), layers=1)

    def act_bytes_per_token(self, group: str) -> float:
        """Saved activations per token of one layer's attention or MLP share."""
        m, r = self.model, self.chip.lora.rank
        n_attn = sum(1 for t in self.targets if t in ATTN_KINDS)
        n_mlp = sum(1 for t in self.targets if t in MLP_KINDS)
        if group == "attn":
            elems = 2 * m.hidden_size + m.q_dim + 2 * m.n_heads + r * n_attn
        else:
            elems = 2 * m.hidden_size + 3 * m.intermediate_size + r * n_mlp
        return elems * ACT_SAVE_BYTES

    def fixed_bytes(self) -> float:
        """KV cache of one sequence + every layer's adapter weights (trained or frozen)."""
        w = lora_params(self.model, self.chip.lora.rank, self.targets) * (
            self.chip.lora.weight_bits / 8
        )
        return self.seq_len * kv_bytes_per_token(self.model, self.chip) + w

    def group_item_bytes(self, group: str) -> float:
        """Extra SRAM to train one (layer, group): optimizer state + saved activations."""
        kinds = [k for k in GROUPS[group] if k in self.targets]
        state = sum(self.module_params(k) for k in kinds) * (GRAD_BYTES + ADAM_STATE_BYTES)
        return state + self.seq_len * self.act_bytes_per_token(group)

    def sram_needed_bytes(self, modules: list[Module] | set[Module]) -> float:
        groups = {(layer, "attn" if k in ATTN_KINDS else "mlp") for layer, k in modules}
        return self.fixed_bytes() + sum(self.group_item_bytes(g) for _, g in groups)

    def fits(self, modules) -> bool:
        return self.sram_needed_bytes(modules) <= self.capacity_bytes

    @cached_property
    def max_layers(self) -> int:
        """Most whole layers this device can train: largest k with
        ``train_sram_bytes(layers=k)`` + the frozen adapters of the other layers <= SRAM."""
        n = self.model.n_layers
        w_layer = lora_params(self.model, self.chip.lora.rank, self.targets, layers=1) * (
            self.chip.lora.weight_bits / 8
        )
        best = 0
        for k in range(1, n + 1):
            need = train_sram_bytes(self.model, self.chip, self.seq_len, self.batch, layers=k)
            if need["total_bytes"] + (n - k) * w_layer <= self.capacity_bytes:
                best = k
        return best

    # ------------------------------------------------------------------ time and energy
    @cached_property
    def _step(self):
        from romsim.perf.model import PerfModel
        from romsim.perf.train import train_step_cost

        return train_step_cost(PerfModel(self.model, self.chip), self.batch, self.seq_len)

    @property
    def power_w(self) -> float:
        """Average power of a full local step (all layers trained); descriptive
        (``devices.json``): a client's energy is :meth:`step_energy_j` per step."""
        return self._step.energy_j / self._step.time_s

    def _trained_share(self, modules) -> tuple[float, float]:
        """(depth of the backward pass as a share of the layers, share of the LoRA params)."""
        n = self.model.n_layers
        lowest = min(layer for layer, _ in modules)
        p_all = lora_params(self.model, self.chip.lora.rank, self.targets)
        return (n - lowest) / n, sum(self.module_params(k) for _, k in modules) / p_all

    def step_time_s(self, modules) -> float:
        """Simulated time of one local step (batch x seq_len) training ``modules``: the full
        forward pass, the backward pass down to the lowest trained layer, and the optimizer
        update of the trained parameters."""
        cost = self._step
        if not modules:
            return cost.forward_s
        depth, share = self._trained_share(modules)
        return cost.forward_s + depth * cost.backward_s + cost.optimizer_s * share

    def step_energy_j(self, modules) -> float:
        """The perf model's training-step energy (romsim.perf.train) for the trained modules:
        forward, backward down to the lowest trained layer, the optimizer of the trained
        parameters, and leakage over the step's time."""
        cost = self._step
        leak_j = cost.leakage_w * self.step_time_s(modules)
        if not modules:
            return cost.forward_j + leak_j
        depth, share = self._trained_share(modules)
        return cost.forward_j + depth * cost.backward_j + cost.optimizer_j * share + leak_j

    def describe(self) -> dict:
        return {
            "cid": self.cid,
            "class": self.klass,
            "chip": self.chip.name,
            "clock_hz": self.chip.clock_hz,
            "matrix_units": self.chip.mesh.matrix_units,
            "sram_bytes": self.capacity_bytes,
            "max_layers": self.max_layers,
            "step_time_all_layers_s": self.step_time_s(
                all_modules(self.model.n_layers, self.targets)
            ),
            "power_w": self.power_w,
            "uplink_bps": self.link.uplink_bps,
            "downlink_bps": self.link.downlink_bps,
        }


def all_modules(n_layers: int, targets: tuple[str, ...]) -> list[Module]:
    return [(layer, k) for layer in range(n_layers) for k in targets]


def layer_modules(layers, targets: tuple[str, ...]) -> list[Module]:
    return [(layer, k) for layer in sorted(layers) for k in targets]


def build_devices(
    classes: list[DeviceClassSpec],
    model: str | ModelSpec,
    quant: str,
    rank: int,
    alpha: float,
    targets: tuple[str, ...],
    seq_len: int,
    batch: int,
) -> list[Device]:
    """Clients in class order (class 0's devices first). Every device must hold the model in
    ROM and train at least one layer, or the config is rejected."""
    from romsim.estimate import check_fit
    from romsim.mapping import Mapping

    spec = model if isinstance(model, ModelSpec) else load_model(model)
    model = spec.name
    out: list[Device] = []
    for dc in classes:
        if dc.count < 0:
            raise RomsimInputError(f"devices.{dc.name}.count", dc.count, "must be >= 0")
        chip = device_chip(dc, model, quant, rank, alpha, targets)
        problems = [
            p for p in check_fit(spec, chip, Mapping(spec, chip), seq_len) if p.startswith("rom")
        ]
        if problems:
            raise RomsimInputError(f"devices.{dc.name}", dc.chip, problems[0])
        for _ in range(dc.count):
            d = Device(len(out), dc.name, chip, dc.link, spec, seq_len, batch)
            out.append(d)
        if dc.count and out[-1].max_layers < 1:
            raise RomsimInputError(
                f"devices.{dc.name}.sram",
                chip.sram.total_bytes,
                f"too small to train even one LoRA layer at seq_len {seq_len} "
                f"(needs {out[-1].sram_needed_bytes(layer_modules([0], targets)):.0f} bytes)",
            )
    if not out:
        raise RomsimInputError("devices", [], "at least one device is needed")
    return out


# ------------------------------------------------------------------------------ from the FL config
def _numerics_overrides(cfg, overrides) -> dict:
    """A chip-numerics run trains at ``train.act_bits``: the devices' cost model uses the same
    activation width (``cell.act_bits``); FLConfig refuses a device class that says otherwise."""
    out = dict(overrides)
    if cfg.train.numerics == "chip":
        out["cell.act_bits"] = cfg.train.act_bits
    return out


def tiny_spec(n_layers: int) -> ModelSpec:
    """The spec of ``model.gguf = "tiny"``: a random ``n_layers``-layer LLaMA (tests, CI)."""
    cfg = {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": n_layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 260,
        "tie_word_embeddings": True, "max_position_embeddings": 512,
    }  # fmt: skip
    return spec_from_config(cfg, f"tiny-llama-{n_layers}l")


def make_devices(cfg) -> list[Device]:
    """The run's clients (an :class:`romsim.fl.config.FLConfig`) as :class:`Device` (class
    order)."""
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
