"""ROM images: a model's ROM-resident quantized matrices as 64-bit ROM words, and a file format.

Word layout of one matrix (codes and metadata) is defined once in :mod:`romsim.rom.layout`. A
:class:`RomImage` is an ordered set of such matrices in the kernels' 64-bit words (the file format
below); :func:`cell_image` lays a chip's cell out as :mod:`romsim.mapping` assigns it, repacked to
the chip's ``rom.word_bits`` (8, 16, 32 or 64: :data:`romsim.rom.layout.PACKABLE_WORD_BITS`; the
codes and metadata fields are the same bits, only cut into other words).

File format (little-endian), version 1::

    b"ROMSIMG1"                      8 bytes magic
    u64 header_len                   length of the JSON header in bytes
    header (UTF-8 JSON)              {"version": 1, "name": ..., "entries": [...]}
    zero padding to a multiple of 8
    data: per entry, code words then metadata words (uint64 LE), at the offsets in the header

Each entry: name, kind, bits, group_size, n, k, words_offset/n_words, meta_offset/n_meta
(offsets in 64-bit words from the start of the data section).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from romsim.errors import RomsimInputError
from romsim.kernels.qmatmul import KINDS, QTensor
from romsim.rom.layout import KERNEL_WORD_BITS, PACKABLE_WORD_BITS, RomLayout

MAGIC = b"ROMSIMG1"
VERSION = 1


class RomImageError(RomsimInputError):
    """A ROM image file that cannot be read back."""


@dataclass
class RomImage:
    name: str = "rom"
    matrices: dict[str, QTensor] = field(default_factory=dict)

    def add(self, name: str, qt: QTensor) -> None:
        if name in self.matrices:
            raise ValueError(f"duplicate ROM matrix {name!r}")
        self.matrices[name] = qt

    def __getitem__(self, name: str) -> QTensor:
        return self.matrices[name]

    def __contains__(self, name: str) -> bool:
        return name in self.matrices

    def __iter__(self) -> Iterator[str]:
        return iter(self.matrices)

    @property
    def total_words(self) -> int:
        return sum(int(q.words.size + q.meta.size) for q in self.matrices.values())

    @property
    def total_bytes(self) -> int:
        return self.total_words * KERNEL_WORD_BITS // 8

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for qt in self.matrices.values():
            plain = qt.kind in ("affine", "symmetric")
            key = f"w{qt.bits}g{qt.group_size}" if plain else qt.kind
            d = out.setdefault(key, {"matrices": 0, "weights": 0, "code_words": 0, "meta_words": 0})
            d["matrices"] += 1
            d["weights"] += qt.n * qt.k
            d["code_words"] += int(qt.words.size)
            d["meta_words"] += int(qt.meta.size)
        return out

    # ---- file I/O ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename)."""
        path = Path(path)
        entries = []
        off = 0
        for nm, qt in self.matrices.items():
            e = {
                "name": nm,
                "kind": qt.kind,
                "bits": qt.bits,
                "group_size": qt.group_size,
                "n": qt.n,
                "k": qt.k,
                "words_offset": off,
                "n_words": int(qt.words.size),
            }
            off += int(qt.words.size)
            e["meta_offset"] = off
            e["n_meta"] = int(qt.meta.size)
            off += int(qt.meta.size)
            entries.append(e)
        header = json.dumps({"version": VERSION, "name": self.name, "entries": entries}).encode()
        pad = (-(len(MAGIC) + 8 + len(header))) % 8
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC)
                fh.write(np.uint64(len(header)).astype("<u8").tobytes())
                fh.write(header)
                fh.write(b"\0" * pad)
                for qt in self.matrices.values():
                    fh.write(qt.words.astype("<u8").tobytes())
                    fh.write(qt.meta.astype("<u8").tobytes())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | Path) -> RomImage:
        path = Path(path)
        src = str(path)
        if not path.is_file():
            raise RomImageError("path", src, "file not found")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size < 16 or raw[:8].tobytes() != MAGIC:
            raise RomImageError(
                "magic", raw[:8].tobytes(), f"not a ROM image (expected {MAGIC!r})", source=src
            )
        hlen = int(raw[8:16].view("<u8")[0])
        if 16 + hlen > raw.size:
            raise RomImageError(
                "header_len", hlen, "header runs past the end of the file", source=src
            )
        try:
            header = json.loads(raw[16 : 16 + hlen].tobytes())
        except ValueError as e:
            raise RomImageError("header", "JSON", f"unreadable ({e})", source=src) from None
        if header.get("version") != VERSION:
            raise RomImageError("version", header.get("version"), f"expected {VERSION}", source=src)
        start = 16 + hlen + ((-(16 + hlen)) % 8)
        data = raw[start:]
        if data.size % 8:
            raise RomImageError(
                "data", f"{data.size} bytes", "not a whole number of 64-bit words", source=src
            )
        words = data.view("<u8").astype(np.uint64)
        img = cls(name=header.get("name", "rom"))
        for e in header.get("entries", []):
            try:
                kind, nm = e["kind"], e["name"]
                if kind not in KINDS:
                    raise RomImageError(
                        f"entry {nm} kind", kind, f"supported: {', '.join(KINDS)}", source=src
                    )
                w0, nw, m0, nm_ = e["words_offset"], e["n_words"], e["meta_offset"], e["n_meta"]
            except KeyError as k:
                raise RomImageError("entry", e, f"missing key {k}", source=src) from None
            if max(w0 + nw, m0 + nm_) > words.size:
                raise RomImageError(
                    f"entry {nm}",
                    f"words up to {max(w0 + nw, m0 + nm_)}",
                    f"file holds only {words.size} words (truncated)",
                    source=src,
                )
            try:
                qt = QTensor.from_words(
                    kind,
                    e["bits"],
                    e["group_size"],
                    e["n"],
                    e["k"],
                    words[w0 : w0 + nw],
                    words[m0 : m0 + nm_],
                )
            except ValueError as err:
                raise RomImageError(f"entry {nm}", e.get("n_words"), str(err), source=src) from None
            count = qt.rom_groups
            expect = int(qt.rom_layout.code_words(count))
            if nw != expect:
                raise RomImageError(f"entry {nm} n_words", nw, f"expected {expect}", source=src)
            img.add(nm, qt)
        return img


# ------------------------------------------------------------------------------------------------
# Per-fused-cell images (romsim.mapping's assignment)


def _unpack_fields(lay: RomLayout, words: np.ndarray, count: int) -> np.ndarray:
    """Every group's metadata field, row-major: uint64 values, or ``uint8[count, M/8]`` bytes
    for fields wider than 64 bits (K-quants, :mod:`romsim.rom.layout` rule 9)."""
    if lay.meta_bits > 64:
        return lay.unpack_field_bytes(words, count)
    return lay.unpack_fields(words, count)


def _pack_fields(lay: RomLayout, fields: np.ndarray) -> np.ndarray:
    if lay.meta_bits > 64:
        return lay.pack_field_bytes(fields)
    return lay.pack_fields(fields)


def chip_layout(qt: QTensor, word_bits: int) -> RomLayout:
    """``qt``'s layout at a chip's word width (refused unless the words can be packed)."""
    if word_bits not in PACKABLE_WORD_BITS:
        raise RomImageError(
            "rom.word_bits",
            word_bits,
            f"a ROM image packs {', '.join(map(str, PACKABLE_WORD_BITS))}-bit words (other "
            "widths are for the hardware model's estimates only)",
        )
    return qt.rom_layout.with_word_bits(word_bits)


def run_words(qt: QTensor, start: int, stop: int, word_bits: int = KERNEL_WORD_BITS) -> np.ndarray:
    """The words a cell holds for groups ``[start, stop)`` of ``qt`` (row-major group indices):
    the groups' code words, word-aligned, then their metadata packed from a fresh word
    (:mod:`romsim.rom.layout` rule 6), in ``word_bits``-wide words."""
    src = qt.rom_layout
    dst = chip_layout(qt, word_bits)
    wpg = src.words_per_group
    code = dst.repack_codes(qt.words[start * wpg : stop * wpg], src)
    if stop <= start:
        return code
    f = _unpack_fields(src, qt.meta, qt.rom_groups)
    meta = _pack_fields(dst, f[start:stop])
    return np.concatenate([code, meta]).astype(np.uint64)


def cell_image(img: RomImage, mapping, cell: int) -> np.ndarray:
    """The ROM words of one fused cell, as :mod:`romsim.mapping` lays them out: for every matrix
    in execution order, the cell's run of groups ``[start, stop)`` (:func:`run_words`) in the
    chip's ``rom.word_bits``-wide words. ``img`` must hold every matrix the mapping names, in the
    mapping's format."""
    parts: list[np.ndarray] = []
    for mt, start, stop, _row in mapping.cell_layout(cell):
        qt = img[mt.name]
        _check_format(qt, mt)
        parts.append(run_words(qt, start, stop, mt.word_bits))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def _check_format(qt: QTensor, mt) -> None:
    if (qt.kind, qt.bits) != (mt.fmt.kind, mt.fmt.bits):
        raise RomImageError(
            f"matrix {mt.name} format",
            f"{qt.kind}/{qt.bits} bit",
            f"the mapping expects {mt.fmt.kind}/{mt.fmt.bits} bit",
        )
    if (qt.n, qt.k, qt.rom_group_size) != (mt.rows, mt.cols, mt.fmt.group_size):
        raise RomImageError(
            f"matrix {mt.name}",
            (qt.n, qt.k, qt.rom_group_size),
            f"does not match the mapping ({mt.rows}, {mt.cols}, {mt.fmt.group_size})",
        )
    want = RomLayout.for_format(mt.fmt).meta_bits
    if qt.rom_layout.meta_bits != want:
        raise RomImageError(
            f"matrix {mt.name} metadata",
            f"{qt.rom_layout.meta_bits} bits per group",
            f"the mapping's format has {want} (nf4 images store bitsandbytes' fp32 absmax: "
            "give the format scale_bits = 32)",
        )


def image_from_cells(cells: list[np.ndarray], mapping, template: RomImage) -> RomImage:
    """Read per-cell words back into whole matrices (inverse of :func:`cell_image` over all
    cells). ``template`` supplies each matrix's kind/bits (the mapping's format)."""
    pieces: dict[str, list] = {m.name: [] for m in mapping.matrices}
    for c, words in enumerate(cells):
        pos = 0
        for mt, start, stop, _row in mapping.cell_layout(c):
            t = template[mt.name]
            src = chip_layout(t, mt.word_bits)
            n = stop - start
            ncode, nmeta = int(src.code_words(n)), int(src.meta_words(n))
            code = words[pos : pos + ncode]
            meta = words[pos + ncode : pos + ncode + nmeta]
            pos += ncode + nmeta
            code = t.rom_layout.repack_codes(code, src)
            pieces[mt.name].append((start, code, _unpack_fields(src, meta, n)))
    out = RomImage(name=template.name)
    for mt in mapping.matrices:
        t = template[mt.name]
        runs = sorted(pieces[mt.name], key=lambda r: r[0])
        code = np.concatenate([r[1] for r in runs])
        meta = _pack_fields(t.rom_layout, np.concatenate([r[2] for r in runs]))
        out.add(mt.name, QTensor.from_words(t.kind, t.bits, t.group_size, t.n, t.k, code, meta))
    return out
