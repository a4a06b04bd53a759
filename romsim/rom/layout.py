"""The ROM word layout: how a quantization group's codes and metadata lie in ROM words.

This module is the one definition (numpy only: no numba, no torch). The mapping
(:mod:`romsim.mapping`: ``rom_rows``, ``rows_per_cell``), the performance model
(:mod:`romsim.perf.model`), the ROM image (:mod:`romsim.rom.image`), the kernels
(:mod:`romsim.kernels`) and the RTL (:mod:`romsim.rtl.params`) all ask a :class:`RomLayout`.

Rules (``b`` = code bits, ``G`` = group size, ``W`` = word bits, ``M`` = metadata field bits):

1. Groups. A matrix ``W[N, K]`` (row = output) is cut into groups of ``G`` consecutive K
   elements of one row; a row whose K is not a multiple of ``G`` ends in a short group padded with
   code 0. Groups are numbered row-major (row n, then k-group g).
2. Codes. A group's codes are one little-endian bit stream: code i (unsigned, ``b`` bits) at bit
   ``i*b`` of the stream, LSB first. Bit ``j`` of the stream is bit ``j % W`` of the group's word
   ``j // W``, so a word read as an integer holds the stream's bits ``[wW, (w+1)W)``; when ``W``
   is a multiple of 8, the group's words written little-endian are the stream's bytes. Codes may
   straddle words (3-bit codes with ``W = 64``).
3. Word alignment. Every group starts on a word boundary and its stream is padded with zero bits
   to a whole word: ``words_per_group = ceil(G*b / W)``.
3b. Base-3 packing (ternary weights, ``packing = "base3"``: trits t in {-1, 0, +1}). Five trits
   share one byte, ``t0 + 3*t1 + 9*t2 + 27*t3 + 81*t4`` with ``t + 1`` in {0, 1, 2} as digits
   (at most 242); a group of ``G`` trits takes ``ceil(G/5)`` bytes (the last byte's unused digits
   0), the bytes form the group's stream (byte j = stream bits ``[8j, 8j+8)``), padded to whole
   words: ``group_bits = 8*ceil(G/5)``, ``words_per_group = ceil(8*ceil(G/5) / W)``. So
   ``G = 160`` (32 bytes) fills 64-bit words exactly (1.6 bits/weight) while ``G = 128`` (26
   bytes -> 4 words) saves nothing over 2-bit codes. 2-bit ternary codes (``packing = "bits"``)
   follow rule 2 with ``b = 2``. The numpy code packers (:meth:`RomLayout.pack_codes`) refuse
   base-3; a base-3 group's bytes still repack to other word widths, and its metadata fields (GGUF
   TQ1_0, rule 9b) pack as any other.
4. Metadata field. Per group one ``M = scale_bits + zero_bits (+ sub_scale_bits, rule 9)`` bit field: the scale's bit
   pattern (fp16 by default) in bits ``[0, scale_bits)``, then the zero point (unsigned,
   ``zero_bits`` wide; 0 bits for symmetric and Q4_0/Q8_0; Q4_1 stores its fp16 minimum there)
   in ``[scale_bits, M)``.
   A format without per-group metadata (ternary: one per-tensor scale, kept in the cell's
   dequantizer register, not in ROM words) has ``M = 0``: ``words_per_meta = 0``, no
   metadata words (``metas_per_word`` is then 1 by convention).
5. Metadata words. Fields never straddle words. If ``M <= W``, ``metas_per_word = floor(W / M)``
   fields share a word, field j of a word at bit ``j*M`` (LSB first), unused high bits zero. If
   ``M > W`` (only for very narrow words), every field takes ``words_per_meta = ceil(M / W)``
   words of its own, low word first (``metas_per_word`` is then 1). ``n`` groups' metadata take
   ``meta_words(n) = ceil(n / metas_per_word) * words_per_meta`` words; fields follow the groups'
   row-major order, a new row does not restart a word.
6. Where the metadata goes. A whole matrix (a ROM image entry, :class:`romsim.kernels.QTensor`)
   is all its code words (groups row-major) and then all its metadata words. A fused cell holds,
   for every matrix in execution order, its run of groups' code words followed by that run's
   metadata packed from the first field of a fresh word (:func:`romsim.rom.image.cell_image`).
   So a cell needs ``rom_rows(n) = n * words_per_group + meta_words(n)`` words (ROM rows) for
   ``n`` groups of one matrix: the mapping's ``rom_rows`` / ``rows_per_cell``, the ROM image's
   per-cell words, the RTL tile's words and the cycles the performance model charges (one read
   per word, busiest cell). The one deliberate difference: the performance model's ROM-bit
   *energy* counter (``rom_bits``) uses ``dense_words(n) = n * (words_per_group +
   words_per_meta / metas_per_word)``, metadata at its packing density without the partial
   metadata word each cell pads (at most one word per cell and matrix; summed per cell it is
   :attr:`romsim.mapping.MatrixTiles.total_rom_rows`). For ROMA (3B, w4g128, 64-bit words) the
   padded count is 0.9 % more words and would raise decode power from 32.9 to 33.2 W; the
   energy model was calibrated on the dense count, so it stays.
7. GGUF blocks keep llama.cpp's bytes. A block's bytes split into *code* bytes and *metadata*
   bytes, each kept in the block's own byte order: the code bytes (``qs``, plus ``qh``/``hmask``
   high-bit planes where the type has them) are the group's stream, the metadata bytes (``d``,
   ``m``/``dmin``, packed sub-block ``scales``) are the group's field (byte j = field bits
   ``[8j, 8j+8)``). Elements keep llama.cpp's order inside a block, which is not rule 2's
   (:mod:`romsim.kernels.bitpack` converts; :data:`romsim.kernels.bitpack.GGUF_SEGMENTS` lists the
   byte ranges). 32-weight blocks (``G = 32``): Q4_0/Q4_1 (``qs``: byte j holds element j in its
   low nibble, element j+16 in its high nibble; 2 words), Q8_0 (byte j = element j as int8; 4
   words), Q5_0/Q5_1 (``qh`` 4 bytes then ``qs`` 16: 160 bits, 3 words, the last half padding);
   the field is ``d`` (fp16), then ``m`` for Q4_1/Q5_1 (``zero_bits = 16``).
7b. NF4 (bitsandbytes, ``G = 64``) keeps bitsandbytes' packed bytes: byte j holds element 2j in
   its *high* nibble and element 2j+1 in its low nibble (a 16-entry codebook index each; 4
   words); the field is the block's fp32 absmax bit pattern (``scale_bits = 32``).
9. K-quant super-blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: ``G = 256``) follow rule 7: the stream is
   the block's code bytes (Q2_K ``qs`` 64 B; Q3_K ``hmask`` 32 B + ``qs`` 64 B; Q4_K ``qs``
   128 B; Q5_K ``qh`` 32 B + ``qs`` 128 B; Q6_K ``ql`` 128 B + ``qh`` 64 B: exactly ``256*b``
   bits, so 8/12/16/20/24 words), the field its metadata bytes in block order (Q2_K ``scales``
   16 B + ``d`` + ``dmin``; Q3_K ``scales`` 12 B + ``d``; Q4_K/Q5_K ``d`` + ``dmin`` +
   ``scales`` 12 B; Q6_K ``scales`` 16 B + ``d``). The field is ``M = scale_bits + zero_bits +
   sub_scale_bits`` wide (fp16 ``d``, fp16 ``dmin`` when there is one, the packed sub-block
   scales/mins): 160, 112, 128, 128, 144 bits, wider than a 64-bit word, so by rule 5 every
   field takes ``ceil(M / W)`` words of its own (3, 2, 2, 2, 3 at ``W = 64``), low word first;
   :meth:`RomLayout.pack_field_bytes` packs such byte fields.
9b. GGUF ternary blocks (TQ1_0, TQ2_0: ``G = 256``, one fp16 ``d``, ``w = d * (q - 1)`` for a
   digit ``q``) follow rule 7: the field is ``d`` (``M = 16``, 4 fields a 64-bit word). TQ2_0's
   stream is ``qs`` (64 B, 2-bit digits laid out as Q2_K's ``qs``: 8 words). TQ1_0's stream is
   ``qs`` (48 B, 5 base-3 digits a byte) then ``qh`` (4 B, 4 digits a byte), 52 B = 416 bits,
   which is rule 3b's count for ``G = 256`` (``packing = "base3"``: ``8 * ceil(256 / 5)``;
   7 words at ``W = 64``, the last half padding); the digits inside are llama.cpp's fixed-point
   base-3 bytes (:data:`romsim.kernels.bitpack.TQ1_DIGITS`), not rule 3b's digit sums.

8. Mixed widths (a :class:`romsim.quant.WeightFormat` with ``mix``): the matrix's groups form two
   classes, each a layout of its own (:meth:`RomLayout.for_format` of ``base_format`` and
   ``mix_format``); a cell holds a run of each class, the narrow run then the wide run, each run
   its code words then its metadata packed from a fresh word, so a cell holding ``n1`` narrow and
   ``n2`` wide groups of one matrix needs ``rom_rows1(n1) + rom_rows2(n2)`` words
   (:class:`romsim.mapping.MatrixTiles` says which groups are wide and deals them).
   :meth:`RomLayout.for_format` of a mixed format is its base (narrow) class.

Word widths. Counting (words per group, metadata words, ROM rows) holds for any ``W >= 1``; the
hardware model (mapping, perf, area) accepts any ``rom.word_bits`` the config allows. Packing
words into numpy arrays (:meth:`RomLayout.pack_codes` and friends) needs ``W`` in
:data:`PACKABLE_WORD_BITS` (a word is a ``numpy.uint64`` holding ``W`` bits, high bits zero).
The kernels and the ROM image *file* use ``W = 64`` (:data:`KERNEL_WORD_BITS`: they read words
through a ``uint8`` view); a chip's per-cell image and the RTL tiles repack to the chip's
``W`` (:meth:`RomLayout.repack_codes`), the codes and fields being the same bits.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Protocol

import numpy as np

if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
    raise ImportError("romsim.rom.layout assumes a little-endian host")

KERNEL_WORD_BITS = 64  # the kernels' and ROM image file's word (uint64, read through uint8 views)
PACKABLE_WORD_BITS = (8, 16, 32, 64)  # word widths that pack into numpy uint64 arrays
MAX_CODE_BITS = 8  # codes are unpacked to uint8


class _FormatLike(Protocol):
    bits: int
    group_size: int
    scale_bits: int
    zero_bits: int | None


def _packing(fmt: object) -> str:
    return str(getattr(fmt, "packing", "bits"))


@dataclass(frozen=True)
class RomLayout:
    """The word layout of one quantization format at one word width (rules in the module doc)."""

    bits: int
    group_size: int
    zero_bits: int = 0
    scale_bits: int = 16
    word_bits: int = KERNEL_WORD_BITS
    packing: str = "bits"  # "bits" (rule 2) or "base3" (rule 3b, 2-bit ternary codes)
    sub_scale_bits: int = 0  # rule 9: packed sub-block scales/mins of a K-quant super-block

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= MAX_CODE_BITS:
            raise ValueError(f"bits must be in [1, {MAX_CODE_BITS}] (got {self.bits})")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 (got {self.group_size})")
        if self.zero_bits < 0 or self.scale_bits < 0 or (self.scale_bits == 0 < self.zero_bits):
            raise ValueError(
                f"scale_bits must be >= 1 (0 only without a zero point) and zero_bits >= 0 "
                f"(got {self.scale_bits}, {self.zero_bits})"
            )
        if self.packing not in ("bits", "base3"):
            raise ValueError(f"packing must be 'bits' or 'base3' (got {self.packing!r})")
        if self.packing == "base3" and self.bits != 2:
            raise ValueError(f"base-3 packing holds ternary (2-bit) codes (got bits={self.bits})")
        if self.word_bits < 1:
            raise ValueError(f"word_bits must be >= 1 (got {self.word_bits})")
        if self.sub_scale_bits < 0 or self.sub_scale_bits % 8:
            raise ValueError(f"sub_scale_bits must be whole bytes >= 0 (got {self.sub_scale_bits})")

    @classmethod
    def for_format(cls, fmt: _FormatLike, word_bits: int = KERNEL_WORD_BITS) -> RomLayout:
        """The layout of a :class:`romsim.quant.WeightFormat` (or anything with its fields; a
        mixed format gives its base class, rule 8). Ternary has no per-group metadata (rule 4):
        its per-tensor scale is not in ROM words."""
        ternary = getattr(fmt, "kind", None) == "ternary"
        return cls(
            bits=fmt.bits,
            group_size=fmt.group_size,
            zero_bits=0 if ternary else int(fmt.zero_bits or 0),
            scale_bits=0 if ternary else fmt.scale_bits,
            word_bits=word_bits,
            packing=_packing(fmt),
            sub_scale_bits=int(getattr(fmt, "sub_scale_bits", 0) or 0),
        )

    # ---- counting (any word width) -------------------------------------------------------------
    @property
    def group_bits(self) -> int:
        """Bits of a group's code stream before padding (rule 2; rule 3b: whole bytes of 5
        trits)."""
        if self.packing == "base3":
            return 8 * -(-self.group_size // 5)
        return self.group_size * self.bits

    @property
    def words_per_group(self) -> int:
        """Rule 3: ``ceil(G*b / W)`` (rule 3b: ``ceil(8*ceil(G/5) / W)``)."""
        return -(-self.group_bits // self.word_bits)

    @property
    def group_bytes(self) -> int:
        """Bytes of a group's padded words (``W`` a multiple of 8)."""
        return self.words_per_group * self.word_bits // 8

    @property
    def meta_bits(self) -> int:
        """Rule 4: ``scale_bits + zero_bits`` (+ ``sub_scale_bits``, rule 9)."""
        return self.scale_bits + self.zero_bits + self.sub_scale_bits

    @property
    def metas_per_word(self) -> int:
        """Rule 5: fields per metadata word (1 when a field is wider than a word, or when there
        is no per-group metadata)."""
        if self.meta_bits == 0:
            return 1
        return max(1, self.word_bits // self.meta_bits)

    @property
    def words_per_meta(self) -> int:
        """Rule 5: words one field takes (1 unless a field is wider than a word; 0 without
        per-group metadata)."""
        return -(-self.meta_bits // self.word_bits)

    def meta_words(self, n_groups):
        """Rule 5: metadata words of ``n_groups`` groups packed from a fresh word (int or int
        array)."""
        return -(-n_groups // self.metas_per_word) * self.words_per_meta

    def dense_words(self, n_groups):
        """Rule 6: words of ``n_groups`` groups with metadata at its packing density
        (fractional; the perf model's ROM-bit energy counter only)."""
        return n_groups * (self.words_per_group + self.words_per_meta / self.metas_per_word)

    def code_words(self, n_groups):
        """Code words of ``n_groups`` groups."""
        return n_groups * self.words_per_group

    def rom_rows(self, n_groups):
        """Rule 6: words of ``n_groups`` groups of one matrix in one cell (codes + metadata)."""
        return self.code_words(n_groups) + self.meta_words(n_groups)

    def code_position(self, i: int) -> tuple[int, int]:
        """Rule 2: (word within the group, bit within the word) of code ``i``'s LSB. The code
        straddles into the next word when ``bit + bits > word_bits``."""
        if not 0 <= i < self.group_size:
            raise IndexError(f"code {i} outside a group of {self.group_size}")
        return divmod(i * self.bits, self.word_bits)

    def meta_position(self, j: int) -> tuple[int, int]:
        """Rule 5: (metadata word, bit) of field ``j``'s LSB, counted from the first metadata
        word of a run."""
        word, slot = divmod(j, self.metas_per_word)
        return word * self.words_per_meta, slot * self.meta_bits

    # ---- packing (numpy words) -----------------------------------------------------------------
    def _check_packable(self, codes: bool = False) -> None:
        """Refuse what numpy words cannot hold: base-3 codes (``codes``: the code packers only;
        a base-3 stream's bytes repack and its fields pack, rule 9b), formats without per-group
        metadata, word widths outside :data:`PACKABLE_WORD_BITS`."""
        if codes and self.packing != "bits":
            raise ValueError(
                "base-3 (ternary) packing is counted only; the numpy packers refuse it"
            )
        if self.meta_bits == 0:
            raise ValueError("formats without per-group metadata (ternary) are counted only")
        if self.word_bits not in PACKABLE_WORD_BITS:
            raise ValueError(
                f"word_bits {self.word_bits} cannot be packed into numpy words; packable: "
                f"{', '.join(map(str, PACKABLE_WORD_BITS))}"
            )

    def _words_from_bytes(self, by: np.ndarray) -> np.ndarray:
        """``uint8[rows, nbytes]`` (nbytes a multiple of the word bytes) -> flat uint64 words."""
        wb = self.word_bits // 8
        by = np.ascontiguousarray(by)
        return by.reshape(-1).view(f"<u{wb}").astype(np.uint64)

    def _bytes_from_words(self, words: np.ndarray) -> np.ndarray:
        wb = self.word_bits // 8
        w = np.asarray(words, dtype=np.uint64)
        if w.size and int(w.max()) >> self.word_bits:
            raise ValueError(f"word wider than {self.word_bits} bits")
        return np.ascontiguousarray(w.astype(f"<u{wb}")).view(np.uint8)

    def group_stream_bytes(self, codes: np.ndarray) -> np.ndarray:
        """Rule 2: codes ``[n_groups, G]`` -> each group's stream as padded words' bytes
        ``uint8[n_groups, group_bytes]``."""
        b, G = self.bits, self.group_size
        grouped = np.asarray(codes, dtype=np.uint8).reshape(-1, G)
        rows = grouped.shape[0]
        out = np.zeros((rows, self.group_bytes), dtype=np.uint8)
        if (G * b) % 8 == 0 and 8 % b == 0:  # 1, 2, 4, 8 bits: whole codes per byte
            cpb = 8 // b
            lanes = grouped.reshape(rows, G // cpb, cpb)
            acc = np.zeros((rows, G // cpb), dtype=np.uint8)
            for j in range(cpb):
                acc |= lanes[:, :, j] << np.uint8(j * b)
            out[:, : G * b // 8] = acc
        elif G % 8 == 0:  # any bits: 8 codes fill b whole bytes
            v = np.zeros((rows, G // 8), dtype=np.uint64)
            eight = grouped.reshape(rows, G // 8, 8).astype(np.uint64)
            for j in range(8):
                v |= eight[:, :, j] << np.uint64(j * b)
            for t in range(b):
                out[:, t : G * b // 8 : b] = ((v >> np.uint64(8 * t)) & np.uint64(0xFF)).astype(
                    np.uint8
                )
        else:  # generic: bit planes
            planes = (grouped[:, :, None] >> np.arange(b, dtype=np.uint8)) & 1
            stream = np.zeros((rows, self.group_bytes * 8), dtype=np.uint8)
            stream[:, : G * b] = planes.reshape(rows, G * b)
            out = np.packbits(stream, axis=1, bitorder="little")
        return out

    def stream_bytes_codes(self, by: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`group_stream_bytes`: ``uint8[n_groups, >= G*b/8]`` -> codes
        ``uint8[n_groups, G]``."""
        b, G = self.bits, self.group_size
        by = np.asarray(by, dtype=np.uint8)
        rows = by.shape[0]
        if (G * b) % 8 == 0 and 8 % b == 0:
            cpb = 8 // b
            src = by[:, : G * b // 8]
            mask = np.uint8((1 << b) - 1)
            lanes = np.stack([(src >> np.uint8(j * b)) & mask for j in range(cpb)], axis=2)
            return lanes.reshape(rows, G)
        if G % 8 == 0:
            v = np.zeros((rows, G // 8), dtype=np.uint64)
            for t in range(b):
                v |= by[:, t : G * b // 8 : b].astype(np.uint64) << np.uint64(8 * t)
            mask64 = np.uint64((1 << b) - 1)
            eight = np.stack([(v >> np.uint64(j * b)) & mask64 for j in range(8)], axis=2)
            return eight.reshape(rows, G).astype(np.uint8)
        bitstream = np.unpackbits(by, axis=1, bitorder="little")[:, : G * b]
        planes = bitstream.reshape(rows, G, b).astype(np.uint16)
        return (planes << np.arange(b, dtype=np.uint16)).sum(axis=2).astype(np.uint8)

    def pack_codes(self, codes: np.ndarray) -> np.ndarray:
        """Rules 1-3: unsigned codes ``[N, K]`` -> words ``uint64[N * ceil(K/G) *
        words_per_group]`` (groups row-major, each word-aligned, short groups zero-padded)."""
        self._check_packable(codes=True)
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise ValueError(f"codes must be 2-D [N, K], got shape {codes.shape}")
        n, k = codes.shape
        if codes.size and (codes.min() < 0 or codes.max() >= (1 << self.bits)):
            raise ValueError(f"codes out of range for {self.bits} bits")
        ng = -(-k // self.group_size)
        padded = np.zeros((n, ng * self.group_size), dtype=np.uint8)
        padded[:, :k] = codes
        return self._words_from_bytes(self.group_stream_bytes(padded))

    def unpack_codes(self, words: np.ndarray, n: int, k: int) -> np.ndarray:
        """Inverse of :meth:`pack_codes`: ``uint8[N, K]``."""
        self._check_packable(codes=True)
        ng = -(-k // self.group_size)
        want = self.code_words(n * ng)
        words = np.asarray(words, dtype=np.uint64).reshape(-1)
        if words.size != want:
            raise ValueError(
                f"expected {want} words for [{n}, {k}] w{self.bits}g{self.group_size} at "
                f"{self.word_bits}-bit words, got {words.size}"
            )
        by = self._bytes_from_words(words).reshape(n * ng, self.group_bytes)
        return self.stream_bytes_codes(by).reshape(n, ng * self.group_size)[:, :k]

    def pack_fields(self, fields: np.ndarray) -> np.ndarray:
        """Rule 5: ``meta_bits``-wide fields (flat, in group order) -> metadata words."""
        self._check_packable()
        f = np.asarray(fields, dtype=np.uint64).reshape(-1)
        M, W = self.meta_bits, self.word_bits
        if f.size and M < 64 and int(f.max()) >> M:
            raise ValueError(f"metadata field wider than {M} bits")
        if M > W:
            parts = [(f >> np.uint64(j * W)) & np.uint64((1 << W) - 1) for j in range(-(-M // W))]
            return np.stack(parts, axis=1).reshape(-1).astype(np.uint64)
        per = self.metas_per_word
        nwords = -(-f.size // per)
        padded = np.zeros(nwords * per, dtype=np.uint64)
        padded[: f.size] = f
        shifts = (np.arange(per, dtype=np.uint64) * np.uint64(M))[None, :]
        return np.bitwise_or.reduce(padded.reshape(nwords, per) << shifts, axis=1).astype(np.uint64)

    def unpack_fields(self, words: np.ndarray, count: int) -> np.ndarray:
        """Inverse of :meth:`pack_fields`: ``uint64[count]`` fields."""
        self._check_packable()
        w = np.asarray(words, dtype=np.uint64).reshape(-1)
        want = int(self.meta_words(count))
        if w.size != want:
            raise ValueError(f"expected {want} metadata words for {count} groups, got {w.size}")
        M, W = self.meta_bits, self.word_bits
        if M > W:
            k = self.words_per_meta
            parts = w.reshape(count, k)
            f = np.zeros(count, dtype=np.uint64)
            for j in range(k):
                f |= parts[:, j] << np.uint64(j * W)
            return f & np.uint64((1 << M) - 1)
        shifts = (np.arange(self.metas_per_word, dtype=np.uint64) * np.uint64(M))[None, :]
        mask = np.uint64((1 << M) - 1)
        return ((w[:, None] >> shifts) & mask).reshape(-1)[:count]

    def pack_meta(self, scale_fp16: np.ndarray, zero: np.ndarray | None) -> np.ndarray:
        """Rules 4-5 for an fp16 scale: scales (float16, any shape, row-major) and zero points
        (unsigned, ``zero_bits`` wide, same shape; None when ``zero_bits == 0``) -> metadata
        words. For Q4_1 pass the fp16 minimum's bit pattern as ``zero`` (``zero_bits=16``)."""
        if self.scale_bits != 16:
            raise ValueError(f"pack_meta packs fp16 scales (scale_bits {self.scale_bits})")
        s = np.ascontiguousarray(scale_fp16, dtype=np.float16).reshape(-1).view(np.uint16)
        fields = s.astype(np.uint64)
        if self.zero_bits:
            if zero is None:
                raise ValueError(f"zero points needed ({self.zero_bits} zero bits)")
            z = np.asarray(zero).reshape(-1).astype(np.uint64)
            if z.size != fields.size:
                raise ValueError("scale and zero sizes differ")
            if z.size and int(z.max()) >= (1 << self.zero_bits):
                raise ValueError(f"zero out of range for {self.zero_bits} bits")
            fields |= z << np.uint64(16)
        return self.pack_fields(fields)

    def unpack_meta(self, words: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`pack_meta`: (float16 scales, zero fields as uint32), flat."""
        if self.scale_bits != 16:
            raise ValueError(f"unpack_meta reads fp16 scales (scale_bits {self.scale_bits})")
        f = self.unpack_fields(words, count)
        scale = (f & np.uint64(0xFFFF)).astype(np.uint16).view(np.float16)
        if self.zero_bits:
            zero = (f >> np.uint64(16)).astype(np.uint32)
        else:
            zero = np.zeros(count, np.uint32)
        return scale, zero

    def pack_field_bytes(self, fields: np.ndarray) -> np.ndarray:
        """Rule 5 for whole-byte fields of any width (rule 9's K-quant fields are wider than a
        uint64): ``uint8[count, M/8]`` (byte j = field bits ``[8j, 8j+8)``) -> metadata words."""
        self._check_packable()
        if self.meta_bits % 8:
            raise ValueError(f"field of {self.meta_bits} bits is not whole bytes")
        fb = np.ascontiguousarray(fields, dtype=np.uint8)
        nb = self.meta_bits // 8
        fb = fb.reshape(-1, nb)
        if self.meta_bits <= 64:
            v = np.zeros(fb.shape[0], np.uint64)
            for j in range(nb):
                v |= fb[:, j].astype(np.uint64) << np.uint64(8 * j)
            return self.pack_fields(v)
        wb = self.word_bits // 8
        out = np.zeros((fb.shape[0], self.words_per_meta * wb), np.uint8)
        out[:, :nb] = fb
        return self._words_from_bytes(out)

    def unpack_field_bytes(self, words: np.ndarray, count: int) -> np.ndarray:
        """Inverse of :meth:`pack_field_bytes`: ``uint8[count, M/8]``."""
        self._check_packable()
        if self.meta_bits % 8:
            raise ValueError(f"field of {self.meta_bits} bits is not whole bytes")
        nb = self.meta_bits // 8
        if self.meta_bits <= 64:
            f = self.unpack_fields(words, count)
            return np.stack(
                [((f >> np.uint64(8 * j)) & np.uint64(0xFF)).astype(np.uint8) for j in range(nb)],
                axis=1,
            ).reshape(count, nb)
        w = np.asarray(words, dtype=np.uint64).reshape(-1)
        want = int(self.meta_words(count))
        if w.size != want:
            raise ValueError(f"expected {want} metadata words for {count} groups, got {w.size}")
        by = self._bytes_from_words(w).reshape(count, -1)
        return np.ascontiguousarray(by[:, :nb])

    # ---- changing the word width ---------------------------------------------------------------
    def with_word_bits(self, word_bits: int) -> RomLayout:
        return RomLayout(
            self.bits,
            self.group_size,
            self.zero_bits,
            self.scale_bits,
            word_bits,
            self.packing,
            self.sub_scale_bits,
        )

    def repack_codes(self, words: np.ndarray, src: RomLayout) -> np.ndarray:
        """Code words of whole groups laid out by ``src`` (same format, another word width) in
        this layout: the same streams, re-cut and re-padded."""
        self._check_same_format(src)
        src._check_packable()
        self._check_packable()
        words = np.asarray(words, dtype=np.uint64).reshape(-1)
        if words.size % src.words_per_group:
            raise ValueError(f"{words.size} words is not whole groups of {src.words_per_group}")
        ng = words.size // src.words_per_group
        by = src._bytes_from_words(words).reshape(ng, src.group_bytes)
        nb = -(-self.group_bits // 8)
        out = np.zeros((ng, self.group_bytes), dtype=np.uint8)
        out[:, :nb] = by[:, :nb]
        return self._words_from_bytes(out)

    def repack_meta(self, words: np.ndarray, count: int, src: RomLayout) -> np.ndarray:
        """Metadata words of ``count`` groups laid out by ``src`` in this layout."""
        self._check_same_format(src)
        if self.meta_bits > 64 or src.meta_bits > 64:
            return self.pack_field_bytes(src.unpack_field_bytes(words, count))
        return self.pack_fields(src.unpack_fields(words, count))

    def _check_same_format(self, src: RomLayout) -> None:
        if (
            src.bits,
            src.group_size,
            src.zero_bits,
            src.scale_bits,
            src.packing,
            src.sub_scale_bits,
        ) != (
            self.bits,
            self.group_size,
            self.zero_bits,
            self.scale_bits,
            self.packing,
            self.sub_scale_bits,
        ):
            raise ValueError(f"cannot repack {src} as {self}: formats differ")


def n_groups(k: int, group_size: int) -> int:
    """Rule 1: groups per row of ``k`` elements."""
    return math.ceil(k / group_size)
