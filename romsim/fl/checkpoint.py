"""Checkpoints of a federated run: ``checkpoint/state.json`` + ``round-NNNN.npz`` (the global
adapter and the strategy's state), written atomically after every round, and read back on
resume trusting nothing (:func:`read_checkpoint`). Torch-free: resume is checked before Ray,
torch or the model start.

``state.json``: ``round``, ``file`` (``round-NNNN.npz``), ``config_digest`` (resume refuses a
different config), the metrics ``rows`` of rounds 0..round and the per-round ``details``.
The ``.npz`` holds ``global/<key>`` (the adapter) and ``planner/<key>`` (the strategy's state);
with TraMark also ``tramark-NNNN.npz`` (:meth:`romsim.fl.tramark.TraMarkServer.save`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from romsim import jsonout
from romsim.errors import RomsimInputError
from romsim.fl.files import atomic_write, load_npz, save_npz
from romsim.fl.metrics import CSV_FIELDS


def config_digest(cfg) -> str:
    """The config's identity for resume: every section but ``run.out``."""
    d = cfg.to_dict()
    d["run"] = {k: v for k, v in d["run"].items() if k != "out"}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def expected_adapter_shapes(cfg, devices=None) -> dict[str, tuple[int, int]]:
    """The global adapter's arrays (canonical key -> shape) from the model spec, torch-free:
    ``A`` is (rank, in_features), ``B`` (out_features, rank); the same as
    :func:`romsim.fl.train.adapter_shapes` of the loaded model."""
    from romsim.fl.devices import make_devices

    devices = make_devices(cfg) if devices is None else devices
    spec, r = devices[0].model, cfg.lora.rank
    out: dict[str, tuple[int, int]] = {}
    for layer in range(spec.n_layers):
        for kind in cfg.lora.targets:
            n_out, k_in = spec.linear_shape(kind)
            out[f"{layer}.{kind}.A"] = (r, k_in)
            out[f"{layer}.{kind}.B"] = (n_out, r)
    return out


# ------------------------------------------------------------------------------ writing
def write_checkpoint(ck: Path, rnd: int, glob: dict[str, np.ndarray], planner, rows: list[dict],
                     details: list[dict], cdig: str, tramark=None) -> None:  # fmt: skip
    """Round ``rnd``'s checkpoint in ``ck``: the arrays first, then ``state.json`` naming them
    (atomic), then the older rounds' files go."""
    arrs = {f"global/{k}": v for k, v in glob.items()}
    arrs.update({f"planner/{k}": v for k, v in planner.state_arrays().items()})
    name = f"round-{rnd:04d}.npz"
    save_npz(ck / name, arrs)
    if tramark is not None:
        tramark.save(ck, rnd)
    st = {"round": rnd, "file": name, "config_digest": cdig, "rows": rows, "details": details}
    atomic_write(ck / "state.json", jsonout.dumps(st).encode())
    for old in ck.glob("round-*.npz"):
        if old.name != name:
            old.unlink()
    if tramark is not None:
        tramark.prune(ck, rnd)


# ------------------------------------------------------------------------------ reading
def bad_file(path: Path, field: str, value: object, rule: str) -> RomsimInputError:
    """The one error a bad checkpoint file raises (naming the file)."""
    return RomsimInputError(field, value, rule, source=str(path))


def read_state(path: Path) -> dict:
    """``checkpoint/state.json``: a JSON object with round, file, config digest, rows, details."""
    try:
        st = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_file(path, "file", path.name, f"is truncated or corrupt ({e})") from None
    if not isinstance(st, dict):
        raise bad_file(path, "file", path.name, "is not a JSON object")
    types = {"round": int, "file": str, "config_digest": str, "rows": list, "details": list}
    for key, typ in types.items():
        v = st.get(key)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise bad_file(path, key, v, f"missing or not a {typ.__name__}")
    if st["round"] < 0:
        raise bad_file(path, "round", st["round"], "must be >= 0")
    for i, row in enumerate(st["rows"]):
        if not isinstance(row, dict) or row.get("round") != i:
            shown = row.get("round") if isinstance(row, dict) else row
            raise bad_file(path, f"rows.{i}.round", shown, f"is not the metrics row of round {i}")
        for k in CSV_FIELDS:  # JSON writes NaN as null; the rows in memory hold NaN again
            if row.get(k, 0.0) is None:
                row[k] = float("nan")
            elif not isinstance(row.get(k, 0.0), int | float):
                raise bad_file(path, f"rows.{i}.{k}", row.get(k), "is not a number")
    return st


def load_npz_checked(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise bad_file(path, "file", path.name, "is missing (the checkpoint is incomplete)")
    try:
        return load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise bad_file(path, "file", path.name, f"is truncated or corrupt ({e})") from None


def check_arrays(path: Path, prefix: str, arrs: dict[str, np.ndarray],
                 shapes: dict[str, tuple[int, ...]], exact: bool) -> None:  # fmt: skip
    """Keys, shapes, float dtype and finiteness of ``arrs`` against ``shapes``."""
    if exact and set(arrs) != set(shapes):
        missing = sorted(set(shapes) - set(arrs))[:3]
        extra = sorted(set(arrs) - set(shapes))[:3]
        what = f"missing {missing}" if missing else f"unknown {extra}"
        raise bad_file(path, f"{prefix}*", f"{len(arrs)} tensors",
                       f"do not match the config's adapter ({len(shapes)} tensors): {what}")  # fmt: skip
    for k in sorted(arrs):
        a = arrs[k]
        if k not in shapes:
            raise bad_file(path, prefix + k, tuple(a.shape),
                           "is not a tensor of the config's adapter")  # fmt: skip
        if tuple(a.shape) != tuple(shapes[k]):
            raise bad_file(path, prefix + k, tuple(a.shape), f"wrong shape, expected {shapes[k]}")
        if not np.issubdtype(a.dtype, np.floating):
            raise bad_file(path, prefix + k, str(a.dtype), "is not a float tensor")
        if not np.all(np.isfinite(a)):
            raise bad_file(path, prefix + k, tuple(a.shape), "holds NaN or inf")


def check_planner_arrays(npz: Path, arrs: dict[str, np.ndarray],
                         shapes: dict[str, tuple[int, int]]) -> None:  # fmt: skip
    """The strategy's state: STAgg's previous update per adapter tensor, the last norms."""
    stagg = {k[len("stagg/") :]: v for k, v in arrs.items() if k.startswith("stagg/")}
    check_arrays(npz, "planner/stagg/", stagg, shapes, exact=False)
    last = {k[len("last/") :]: v for k, v in arrs.items() if k.startswith("last/")}
    check_arrays(npz, "planner/last/", last, shapes, exact=False)
    other = sorted(set(arrs) - {f"stagg/{k}" for k in stagg} - {f"last/{k}" for k in last}
                   - {"norms/keys", "norms/values", "fim/prior"})  # fmt: skip
    if other:
        raise bad_file(npz, "planner/" + other[0], None, "is not a strategy state tensor")
    if "fim/prior" in arrs:  # FIM-HLA's kept Fisher prior (fim_persist)
        fp = arrs["fim/prior"]
        n_layers = len({k.split(".")[0] for k in shapes})
        if (fp.shape != (n_layers,) or not np.issubdtype(fp.dtype, np.floating)
                or not np.all(np.isfinite(fp)) or np.any(fp < 0) or not fp.sum() > 0):  # fmt: skip
            raise bad_file(npz, "planner/fim/prior", tuple(fp.shape),
                           f"must be {n_layers} finite non-negative layer probabilities")  # fmt: skip
    if ("norms/keys" in arrs) != ("norms/values" in arrs):
        raise bad_file(npz, "planner/norms", sorted(arrs), "needs both norms/keys and norms/values")
    if "norms/keys" in arrs:
        keys, vals = arrs["norms/keys"], arrs["norms/values"]
        if keys.ndim != 1 or vals.shape != keys.shape or keys.dtype.kind != "U":
            raise bad_file(npz, "planner/norms/values", tuple(vals.shape),
                           f"must be numbers, one per key ({keys.shape})")  # fmt: skip
        if not np.issubdtype(vals.dtype, np.number) or not np.all(np.isfinite(vals)):
            raise bad_file(npz, "planner/norms/values", str(vals.dtype), "must be finite numbers")


def read_checkpoint(ck: Path, cfg=None, shapes: dict[str, tuple[int, int]] | None = None,
                    ) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
    """The last checkpoint in ``ck`` (a run's ``checkpoint/`` folder): its state (round,
    metrics rows, config digest), the global adapter arrays and the strategy's state arrays.

    Nothing read is trusted: a truncated or corrupt file, a round outside ``cfg``'s run, a
    different config, missing/extra tensors, wrong shapes (``shapes``: the adapter's, default
    :func:`expected_adapter_shapes`) or NaN/inf are each one :class:`RomsimInputError` naming
    the file."""
    st_path = ck / "state.json"
    st = read_state(st_path)
    rnd = st["round"]
    if cfg is not None:
        if not 0 <= rnd <= cfg.run.rounds:
            raise bad_file(st_path, "round", rnd,
                           f"is outside this run (0..run.rounds = {cfg.run.rounds})")  # fmt: skip
        if st["config_digest"] != config_digest(cfg):
            raise bad_file(st_path, "config_digest", st["config_digest"],
                           "written by a different config (resume with the one it started with)")  # fmt: skip
    if st["file"] != f"round-{rnd:04d}.npz":  # also: no path outside checkpoint/
        raise bad_file(st_path, "file", st["file"], f"is not the file of round {rnd}")
    if len(st["rows"]) != rnd + 1 or len(st["details"]) != rnd:
        raise bad_file(st_path, "rows", f"{len(st['rows'])} rows, {len(st['details'])} details",
                       f"round {rnd} needs {rnd + 1} metrics rows and {rnd} details")  # fmt: skip
    npz = ck / st["file"]
    arrs = load_npz_checked(npz)
    unknown = sorted(k for k in arrs if not k.startswith(("global/", "planner/")))
    if unknown:
        raise bad_file(npz, unknown[0], None, "is not a checkpoint tensor (global/ or planner/)")

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrs.items() if k.startswith(prefix)}

    glob, planner = part("global/"), part("planner/")
    if cfg is not None:
        shapes = expected_adapter_shapes(cfg) if shapes is None else shapes
    if shapes is not None:
        check_arrays(npz, "global/", glob, shapes, exact=True)
        check_planner_arrays(npz, planner, shapes)
    return st, glob, planner
