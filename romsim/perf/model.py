"""Cycle-approximate timing of prefill, decode and one LoRA training step.

Each weight matrix is tiled onto the fused cells by :mod:`romsim.mapping`; a matmul costs the
cycles of its busiest cell (ROM words read, MAC cycles) streamed against the activation broadcast
and the partial-sum reduction over the mesh, plus fixed latencies. LoRA and attention run on the
H-Unit beside the matrix units, from SRAM; norms, RoPE, softmax and SiLU on the vector units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from romsim.config import ChipConfig
from romsim.mapping import Mapping, MatrixTiles
from romsim.modelspec import LINEAR_KINDS, ModelSpec
from romsim.perf.memory import embed_read_per_token
from romsim.perf.ops import RESOURCES, Op, OpTable

# Matmuls that share one broadcast input, in execution order.
FUSED_INPUTS = (
    ("qkv", ("q", "k", "v")),
    ("o", ("o",)),
    ("gate_up", ("gate", "up")),
    ("down", ("down",)),
)


@dataclass(frozen=True)
class _Derived:
    U: int  # matrix units
    VU: int  # vector units
    cols: int
    hops: int  # mesh hops from the vector row to the farthest matrix unit
    act_bytes: float  # per activation element on the wire (mantissa + shared exponent)
    kv_bytes: float  # per cached K or V element (mantissa + shared exponent)
    lora_bytes: float


class PerfModel:
    """Timing of one (model, chip) pair. Build once, evaluate many context/prompt lengths."""

    def __init__(self, model: ModelSpec, chip: ChipConfig, mapping: Mapping | None = None):
        self.model = model
        self.chip = chip
        self.mapping = mapping or Mapping(model, chip)
        mesh = chip.mesh
        g = chip.quant.default.group_size
        self.d = _Derived(
            U=mesh.matrix_units,
            VU=max(1, mesh.vector_units),
            cols=mesh.cols,
            hops=max(1, (mesh.rows - mesh.vector_rows + 1) // 2),
            act_bytes=chip.cell.act_bits / 8 + 1 / g,  # 8-bit shared exponent per group
            kv_bytes=(chip.sram.kv_bits + chip.sram.kv_exp_bits / chip.sram.kv_group) / 8,
            lora_bytes=chip.lora.weight_bits / 8,
        )
        self.layer_tiles = {m.kind: m for m in self.mapping.layer_matrices(0)}
        self.lm_head = next((m for m in self.mapping.matrices if m.kind == "lm_head"), None)
        self.batch = chip.operating.batch
        self.decode_table = OpTable(self.layer_ops(tokens=self.batch, decode=True))
        self.token_table = OpTable(self.token_ops(tokens=self.batch))

    # ------------------------------------------------------------------ op builders
    def _matmul(self, name: str, group: str, tiles: list[MatrixTiles], T: int) -> Op:
        c, d = self.chip, self.d
        K = tiles[0].cols
        lat = (
            2 * d.hops * c.interconnect.hop_latency_cycles  # broadcast out, partials back
            + c.cell.pipeline_depth_cycles
            + c.cell.tree_cycles  # reduction tree inside a matrix unit
            + c.interconnect.sync_cycles_per_op
        )
        op = Op(name, group, lat)
        link = c.interconnect.link_bytes_per_cycle
        op.add("bcast", T * K * d.act_bytes / link)
        op.count("link_bytes", T * K * d.act_bytes * d.cols * d.hops)
        op.count("unit_bus_bytes", T * K * d.act_bytes * d.U)  # each unit's bus, once
        rom_rows = sum(int(m.rom_rows(m.max_groups_per_cell)) for m in tiles)
        mac_cyc = sum(m.max_cell_code_bits for m in tiles) / c.cell.mac_weight_bits_per_cycle
        # A cell's run of groups covers a contiguous K range; the busiest cell whose run sits at
        # the end of K cannot start before the broadcast has delivered it (checked against the
        # cycle-level simulation in romsim/perf/cyclesim.py). Paid once per op, not per token.
        first = tiles[0]
        n0 = first.max_groups_per_cell
        gpr = first.groups_per_row
        wait = (K * d.act_bytes / link) * max(0, gpr - n0 + 1) / gpr if n0 < gpr else 0.0
        # A ROM word read serves the activations of up to cell.weight_reuse_tokens tokens (its
        # operand registers); the MAC array pays every token, the ROM array once per reuse.
        reads = -(-T // c.cell.weight_reuse_tokens)
        op.add("rom", reads * rom_rows / c.rom.reads_per_cycle + wait)
        op.add("mac", T * mac_cyc)
        partials = sum(m.rows + d.U for m in tiles)
        op.add("reduce", T * partials * c.cell.acc_bits / 8 / (d.cols * link))
        op.count("link_bytes", T * partials * c.cell.acc_bits / 8 * d.hops)
        # ROM-bit energy counter: metadata at its packing density, without the per-cell padding
        # the cycles above pay (romsim.rom.layout, rule 6, says why the two differ)
        total_words = sum(m.dense_words() for m in tiles)
        op.count("rom_bits", reads * total_words * c.rom.word_bits)
        op.count("l_macs", T * sum(m.rows * m.cols for m in tiles))
        return op

    def _lora(self, name: str, tiles: list[MatrixTiles], T: int) -> Op | None:
        c, d = self.chip, self.d
        r = c.lora.rank
        tiles = [m for m in tiles if m.kind in c.lora.targets]
        if r == 0 or not tiles:
            return None
        K = tiles[0].cols
        macs = sum(r * (K + m.rows) for m in tiles)
        weight_bytes = macs * d.lora_bytes
        op = Op(name, "lora", c.h_unit.op_latency_cycles)
        op.add("h_mac", T * macs / (d.U * c.h_unit.macs_per_unit_per_cycle))
        # LoRA weights stream from SRAM once per block of tokens held in the H-Unit
        blocks = -(-T // c.h_unit.token_block)
        op.add("sram", blocks * weight_bytes / (d.U * c.sram_read_bytes_per_cycle_per_unit))
        op.count("h_macs", T * macs)
        op.count("sram_read_bytes", blocks * weight_bytes)
        return op

    def _vector(
        self, name: str, group: str, elems: float, ops_per_elem: float, sfu_per_elem: float
    ) -> Op:
        c, d = self.chip, self.d
        op = Op(name, group, c.vector.op_latency_cycles)
        op.add("vec", elems * ops_per_elem / (d.VU * c.vector.lanes_per_unit))
        if sfu_per_elem:
            op.add("sfu", elems * sfu_per_elem / (d.VU * c.vector.sfu_lanes_per_unit))
        op.count("vec_ops", elems * (ops_per_elem + sfu_per_elem))
        return op

    def _attention(self, T: int, decode: bool, ctx0: int) -> list[Op]:
        """Score and value products on the H-Unit over the KV cache in SRAM, softmax on the
        vector units. Decode: per-context terms stay symbolic (``per_ctx``); prefill of ``T``
        tokens after ``ctx0`` cached ones: causal sums are folded into constants."""
        c, d, m = self.chip, self.d, self.model
        hu = d.U * c.h_unit.macs_per_unit_per_cycle
        sram_bw = d.U * c.sram_read_bytes_per_cycle_per_unit
        if decode:  # T sequences of one new token each, every one over its own KV cache
            pairs_c, pairs_x = float(T), float(T)  # (query, key) pairs = ctx + 1 per sequence
            kv_reads_c, kv_reads_x = float(T), float(T)
        else:
            pairs_c, pairs_x = T * ctx0 + T * (T + 1) / 2, 0.0
            blocks = -(-T // c.h_unit.token_block)
            kv_reads_c, kv_reads_x = blocks * (ctx0 + T), 0.0
        ops = []
        for part in ("score", "value"):
            op = Op(
                f"attn_{part}",
                f"attn_{part}",
                c.h_unit.op_latency_cycles + d.hops * c.interconnect.hop_latency_cycles,
            )
            macs = m.n_heads * m.head_dim
            op.add("h_mac", pairs_c * macs / hu, pairs_x * macs / hu)
            kvb = m.kv_dim * d.kv_bytes
            op.add("sram", kv_reads_c * kvb / sram_bw, kv_reads_x * kvb / sram_bw)
            op.count("h_macs", pairs_c * macs, pairs_x * macs)
            op.count("sram_read_bytes", kv_reads_c * kvb, kv_reads_x * kvb)
            ops.append(op)
            if part == "score":
                # softmax stays in the H-Unit (flash-attention style: scores never cross the mesh)
                sm = Op("softmax", "softmax", c.h_unit.op_latency_cycles)
                el_c, el_x = pairs_c * m.n_heads, pairs_x * m.n_heads
                sfu = d.U * c.h_unit.sfu_lanes_per_unit
                sm.add("h_mac", 4 * el_c / hu, 4 * el_x / hu)  # max, subtract, sum, scale
                sm.add("sfu", el_c / sfu, el_x / sfu)
                sm.count("h_ops", 5 * el_c, 5 * el_x)
                ops.append(sm)
        return ops

    def layer_ops(self, tokens: int, decode: bool, ctx0: int = 0) -> list[Op]:
        """Ops of one decoder layer for ``tokens`` tokens (decode: one token, symbolic ctx)."""
        c, d, m = self.chip, self.d, self.model
        T = tokens
        H, Iff = m.hidden_size, m.intermediate_size
        ops: list[Op] = [self._vector("attn_norm", "norm", T * H, 3, 1 / H)]
        for group, kinds in FUSED_INPUTS:
            tiles = [self.layer_tiles[k] for k in kinds]
            ops.append(self._matmul(group, group, tiles, T))
            lo = self._lora(f"lora_{group}", tiles, T)
            if lo is not None:
                # the LoRA path runs on the H-Unit in parallel with the base matmul
                base = ops[-1]
                for res, (a, b) in lo.stages.items():
                    base.add(res, a, b)
                for ev, (a, b) in lo.events.items():
                    base.count(ev, a, b)
                base.latency_cycles = max(base.latency_cycles, lo.latency_cycles)
            if group == "qkv":
                ops.append(self._vector("rope", "rope", T * (m.q_dim + m.kv_dim), 4, 0))
                kvw = Op("kv_write", "kv_write", d.hops * c.interconnect.hop_latency_cycles)
                b = T * 2 * m.kv_dim * d.kv_bytes
                kvw.add("link", b / (d.cols * c.interconnect.link_bytes_per_cycle))
                kvw.add("sram", b / (d.U * c.sram_write_bytes_per_cycle_per_unit))
                kvw.count("sram_write_bytes", b)
                ops.append(kvw)
                ops.extend(self._attention(T, decode, ctx0))
            elif group == "o":
                ops.append(self._vector("residual_attn", "norm", T * H, 1, 0))
                ops.append(self._vector("ffn_norm", "norm", T * H, 3, 1 / H))
            elif group == "gate_up":
                ops.append(self._vector("silu_mul", "silu", T * Iff, 3, 1))
            elif group == "down":
                ops.append(self._vector("residual_ffn", "norm", T * H, 1, 0))
        return ops

    def token_ops(self, tokens: int) -> list[Op]:
        """Per-token ops outside the decoder layers: final norm, lm_head, sampling."""
        m = self.model
        ops = [self._vector("final_norm", "norm", tokens * m.hidden_size, 3, 1 / m.hidden_size)]
        if self.lm_head is not None:
            ops.append(self._matmul("lm_head", "lm_head", [self.lm_head], tokens))
            # argmax / top-k over the vocabulary on the vector units
            ops.append(self._vector("sampling", "sampling", tokens * m.vocab_size, 2, 0))
        else:  # the host computes the head: the fp16 hidden state out, the token id back
            ops.append(
                self._offchip("lm_head_offchip", "lm_head", tokens * (2 * m.hidden_size + 4))
            )
        ops += self._embed(tokens)
        return ops

    def _embed(self, tokens: int) -> list[Op]:
        """The embedding lookup: a row read per token from wherever the table lives."""
        er = embed_read_per_token(self.model, self.chip)
        if er.placement == "off_chip":  # the host sends the embedded token
            return [self._offchip("embed_offchip", "embed", tokens * er.offchip_read_bytes)]
        c, d = self.chip, self.d
        op = Op("embed", "embed", c.interconnect.hop_latency_cycles * d.hops)
        if er.placement == "rom":  # a row lies in one or two cells: read at one word per cycle
            op.add("rom", tokens * er.rom_words / c.rom.reads_per_cycle)
            op.count("rom_bits", tokens * er.rom_bits)
        else:
            op.add("sram", tokens * er.sram_read_bytes / c.sram_read_bytes_per_cycle_per_unit)
            op.count("sram_read_bytes", tokens * er.sram_read_bytes)
        return [op]

    def _offchip(self, name: str, group: str, nbytes: float) -> Op:
        """Bytes over the off-chip link at ``offchip.bandwidth_bytes_per_s``."""
        oc = self.chip.offchip
        op = Op(name, group, self.chip.interconnect.hop_latency_cycles * self.d.hops)
        op.add("offchip", nbytes * self.chip.clock_hz / oc.bandwidth_bytes_per_s)
        op.count("offchip_bytes", nbytes)
        return op

    # ------------------------------------------------------------------ evaluation
    def decode_cycles(self, ctx: np.ndarray | float) -> np.ndarray:
        """Cycles to generate one token with ``ctx`` tokens already in the KV cache."""
        x = np.atleast_1d(np.asarray(ctx, dtype=np.float64))
        layer = self.decode_table.op_cycles(x).sum(axis=0) * self.model.n_layers
        return layer + self.token_table.op_cycles(x).sum(axis=0)

    def prefill_chunk(self, prompt_len: int) -> int:
        """Prompt tokens processed together: as many as fit the activation SRAM."""
        m = self.model
        per_tok = (m.q_dim + 2 * m.kv_dim + 2 * m.intermediate_size + 2 * m.hidden_size) * 2
        return max(1, min(prompt_len, self.chip.sram.act_bytes // per_tok))

    def prefill_ops(self, prompt_len: int, ctx0: int = 0) -> list[tuple[Op, int]]:
        """(op, repeat count) for the whole prefill of ``prompt_len`` tokens."""
        chunk = self.prefill_chunk(prompt_len)
        out: list[tuple[Op, int]] = []
        done = 0
        while done < prompt_len:
            T = min(chunk, prompt_len - done)
            out += [
                (op, self.model.n_layers)
                for op in self.layer_ops(T, decode=False, ctx0=ctx0 + done)
            ]
            done += T
        # only the last prompt token needs logits for the first generated token
        out += [(op, 1) for op in self.token_ops(1)]
        return out

    def prefill_cycles(self, prompt_len: int) -> float:
        total = 0.0
        for op, n in self.prefill_ops(prompt_len):
            total += n * (op.latency_cycles + max((a for a, _ in op.stages.values()), default=0.0))
        return total

    def utilisation(self, ctx: float) -> dict[str, float]:
        """Busy fraction of each resource during one decode step at ``ctx``."""
        x = np.array([float(ctx)])
        busy = (
            self.decode_table.busy(x)[:, 0] * self.model.n_layers + self.token_table.busy(x)[:, 0]
        )
        total = float(self.decode_cycles(x)[0])
        return {r: float(b / total) for r, b in zip(RESOURCES, busy, strict=True)}

    def decode_breakdown(self, ctx: float) -> dict[str, float]:
        """Cycles per decode token by op group (all layers)."""
        x = np.array([float(ctx)])
        out: dict[str, float] = {}
        for table, mult in ((self.decode_table, self.model.n_layers), (self.token_table, 1)):
            cyc = table.op_cycles(x)[:, 0] * mult
            for g, v in zip(table.groups, cyc, strict=True):
                out[g] = out.get(g, 0.0) + float(v)
        return out

    def decode_events(self, ctx: float) -> dict[str, float]:
        """Actions of one decode step at ``ctx`` (romsim.perf.actions), the clock's cycles too."""
        out: dict[str, float] = {}
        for table, mult in ((self.decode_table, self.model.n_layers), (self.token_table, 1)):
            for op in table.ops:
                for ev, (a, b) in op.events.items():
                    out[ev] = out.get(ev, 0.0) + mult * (a + b * ctx)
        out["clock_cycles"] = float(self.decode_cycles(np.array([float(ctx)]))[0])
        return out

    def prefill_events(self, prompt_len: int) -> dict[str, float]:
        """Actions of the prefill of ``prompt_len`` tokens, the clock's cycles too."""
        out: dict[str, float] = {}
        for op, n in self.prefill_ops(prompt_len):
            for ev, (a, _) in op.events.items():
                out[ev] = out.get(ev, 0.0) + n * a
        out["clock_cycles"] = self.prefill_cycles(prompt_len)
        return out


__all__ = ["PerfModel", "LINEAR_KINDS"]
