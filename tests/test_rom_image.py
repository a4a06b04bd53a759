"""ROM images: file round trip, per-cell layout from romsim.mapping, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from romsim.kernels.qmatmul import QTensor

from romsim.rom import RomImage, RomImageError, cell_image, image_from_cells

SET = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _q4_1(rng, n, k):
    nb = n * k // 32
    d = (rng.random(nb) * 0.02).astype(np.float16).view(np.uint8).reshape(nb, 2)
    m = (-rng.random(nb) * 0.1).astype(np.float16).view(np.uint8).reshape(nb, 2)
    qs = rng.integers(0, 256, (nb, 16), dtype=np.uint8)
    return QTensor.from_gguf(np.concatenate([d, m, qs], 1).reshape(-1), "q4_1", n, k)


def _same(a: QTensor, b: QTensor) -> bool:
    return (a.kind, a.bits, a.group_size, a.n, a.k) == (
        b.kind,
        b.bits,
        b.group_size,
        b.n,
        b.k,
    ) and (
        np.array_equal(a.words, b.words)
        and np.array_equal(a.meta, b.meta)
        and np.array_equal(a.scale, b.scale)
        and np.array_equal(a.zero, b.zero)
        and np.array_equal(a.minimum, b.minimum)
    )


@SET
@given(
    mats=st.lists(
        st.tuples(
            st.integers(1, 40),
            st.integers(1, 200),
            st.sampled_from([2, 3, 4, 8]),
            st.sampled_from([8, 32, 64, 128]),
            st.sampled_from(["affine", "symmetric"]),
        ),
        min_size=1,
        max_size=4,
    ),
    seed=st.integers(0, 2**31),
)
def test_file_roundtrip(tmp_path_factory, mats, seed):
    rng = np.random.default_rng(seed)
    img = RomImage(name="t")
    for i, (n, k, bits, g, kind) in enumerate(mats):
        from romsim.kernels import bitpack as bp

        codes, s, z = bp.quantize_affine(rng.standard_normal((n, k)).astype(np.float32), bits, g)
        img.add(f"m{i}", QTensor.from_affine(codes, s, z, bits, g, kind=kind))
    img.add("head", _q4_1(rng, 3, 64))
    p = tmp_path_factory.mktemp("rom") / "x.rom"
    img.save(p)
    back = RomImage.load(p)
    assert list(back) == list(img)
    assert all(_same(img[nm], back[nm]) for nm in img)
    assert back.total_bytes == img.total_bytes


def test_truncated_or_bad_image_is_one_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    img = RomImage(matrices={"a": _q4_1(rng, 4, 64)})
    p = tmp_path / "a.rom"
    img.save(p)
    blob = p.read_bytes()
    (tmp_path / "t.rom").write_bytes(blob[:-16])
    (tmp_path / "m.rom").write_bytes(b"NOTAROM!" + blob[8:])
    for name in ("t.rom", "m.rom"):
        with pytest.raises(RomImageError) as ei:
            RomImage.load(tmp_path / name)
        assert "\n" not in str(ei.value)


def _tiny_mapping(quant: str, n_cells_units: int = 3, word_bits: int = 64):
    from romsim.config import load_chip
    from romsim.mapping import Mapping
    from romsim.modelspec import ModelSpec

    spec = ModelSpec(
        name="tiny",
        hidden_size=64,
        intermediate_size=96,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        head_dim=32,
        vocab_size=50,
        tie_word_embeddings=True,
    )
    chip = load_chip("roma-3b-w4").with_overrides(
        **{
            "mesh.rows": 2,
            "mesh.cols": n_cells_units,
            "mesh.vector_rows": 1,
            "cell.cells_per_unit": 2,
            "quant": quant,
            "rom.word_bits": word_bits,
        }
    )
    return spec, Mapping(spec, chip)


@pytest.mark.parametrize(
    "quant,word_bits",
    [("w3g32", 64), ("w4g64", 64), ("q4_1", 64), ("w3g32", 32), ("w4g64", 16), ("q4_1", 8)],
)
def test_per_cell_layout_roundtrip(quant, word_bits):
    """Per-cell images at the chip's word width (64 and narrower: codes repacked, metadata
    fields one per word or split over words) read back into the same matrices."""
    spec, mp = _tiny_mapping(quant, word_bits=word_bits)
    rng = np.random.default_rng(1)
    img = RomImage(name="tiny")
    for mt in mp.matrices:
        if quant == "q4_1":
            img.add(mt.name, _q4_1(rng, mt.rows, mt.cols))
        else:
            w = rng.standard_normal((mt.rows, mt.cols)).astype(np.float32)
            img.add(mt.name, QTensor.quantize(w, mt.fmt.bits, mt.fmt.group_size))
    cells = [cell_image(img, mp, c) for c in range(mp.n_cells)]
    # every cell uses exactly the ROM rows the performance model charges it
    assert [len(c) for c in cells] == [int(r) for r in mp.rows_per_cell]
    back = image_from_cells(cells, mp, img)
    assert all(_same(img[nm], back[nm]) for nm in img)
