"""``romsim rtl build`` and ``romsim rtl synth``: Verilog of a fused cell holding a real tile, and
Yosys area of the cell's compute.

Wiring: ``romsim.cli`` calls :func:`add_parser` with its subparsers object; ``args.func`` runs the
chosen subcommand. Amaranth is imported inside the functions only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from romsim.errors import RomsimInputError
from romsim.rom.layout import PACKABLE_WORD_BITS

STYLES = ("fused", "conventional")
# Bounds on the flags, checked by argparse before anything is built or allocated:
# - ROM rows: romsim.config.RomConfig.macro_rows' own maximum (a cell's ROM is one macro).
MAX_ROWS = 1 << 20
# - tokens per start: the row-block captures a start's outputs in one port of
#   max_tokens x groups x (acc_bits + 16) bits (and as many fp32 partials); 64 tokens of a
#   120-group tile is already a 368 kbit port.
MAX_TOKENS = 64
# - synth word width: romsim.config.RomConfig.word_bits' range (8 .. 1024 bits).
SYNTH_WORD_BITS = (8, 1024)
# - accumulator bits: romsim.config.FusedCellConfig.acc_bits' range.
ACC_BITS = (8, 64)
# - structural ROM synthesis (romsim.rtl.brom): image rows (Yosys on 4096 x 64 takes ~1 min)
MAX_ROM_SYNTH_ROWS = 1 << 14
ROM_STYLES = ("brom", "rom")


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return v


def _int_in(lo: int, hi: int, zero_ok: bool = False) -> Callable[[str], int]:
    """argparse type: an integer in ``[lo, hi]`` (or 0 when ``zero_ok``); argparse names the
    flag in its one-line error."""

    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if zero_ok and v == 0:
            return v
        if not lo <= v <= hi:
            extra = " or 0" if zero_ok else ""
            raise argparse.ArgumentTypeError(f"{v} is not in [{lo}, {hi}]{extra}")
        return v

    return conv


def _word_bits(text: str) -> int:
    """argparse type of ``rtl build --cols``: a word width the tile's words can be packed in."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v not in PACKABLE_WORD_BITS:
        raise argparse.ArgumentTypeError(
            f"{v} is not one of {', '.join(map(str, PACKABLE_WORD_BITS))} (the "
            "tile's words are packed into numpy words, romsim.rom.layout)"
        )
    return v


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "rtl",
        help="fused-cell RTL: Verilog of a real tile, Yosys area",
        description="Generate the Amaranth fused cell (B-ROM + compute) for a tile of a real ROM "
        "image, or synthesize its compute with Yosys for the area model.",
    )
    sub = p.add_subparsers(dest="rtl_cmd", required=True)

    b = sub.add_parser("build", help="write Verilog of a cell (or row-block) holding a real tile")
    b.add_argument(
        "--tile",
        default="smollm2-135m:0:q:5",
        help="MODEL:LAYER:MATRIX:CELL (default: %(default)s); MATRIX one of q k v o gate up down",
    )
    b.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8), help="weight code bits")
    b.add_argument(
        "--group-size",
        type=_int_in(8, 4096),
        default=128,
        help="weights per quantization group (a multiple of 8)",
    )
    b.add_argument(
        "--rows",
        type=_int_in(1, MAX_ROWS, zero_ok=True),
        default=0,
        help="ROM rows (words) of the cell, at least the tile's words; 0 = exactly the tile's "
        f"words (default; at most {MAX_ROWS}, the ROM macro's maximum)",
    )
    b.add_argument(
        "--cols",
        type=_word_bits,
        default=64,
        help="ROM columns = bits per word = read width per cycle: 8, 16, 32 or 64 (sets the "
        "chip's rom.word_bits; the MAC array takes one word per cycle; group_size*bits must be a "
        "multiple)",
    )
    b.add_argument("--act-bits", type=int, default=8, help="activation mantissa bits")
    b.add_argument(
        "--acc-bits",
        type=_int_in(*ACC_BITS),
        default=32,
        help="group accumulator / output bits",
    )
    b.add_argument("--mesh", default="3x4", help="chip mesh ROWSxCOLS with one vector row")
    b.add_argument("--cells-per-unit", type=int, default=8)
    b.add_argument(
        "--cells",
        type=_int_in(1, 1 << 16),
        default=1,
        help="row-block of this many consecutive cells (default 1; the chip's cells bound it)",
    )
    b.add_argument("--style", choices=STYLES, default="fused")
    b.add_argument(
        "--max-tokens",
        type=_int_in(1, MAX_TOKENS),
        default=1,
        help=f"activation vectors per start (1 .. {MAX_TOKENS}: the output capture port grows "
        "with it)",
    )
    b.add_argument(
        "--row-sums",
        action="store_true",
        help="add the unit's fp32 row reduction over the (consecutive) cells (with --cells N)",
    )
    b.add_argument(
        "--unit",
        type=int,
        metavar="U",
        help="a whole matrix unit: its cells_per_unit cells (from cell U*cells_per_unit; the "
        "tile's CELL is ignored), the adder tree across them (--row-sums) and the activation "
        "buffer they share",
    )
    b.add_argument(
        "--rom-style",
        choices=("memory", "brom", "rom"),
        default="memory",
        help="ROM inside the cell: behavioural Memory (reference), structural B-ROM, or a "
        "standard NOR-array ROM (rtl/brom.py)",
    )
    b.add_argument("--out", default="build/rtl", help="build folder (default: %(default)s)")
    b.add_argument("--force", action="store_true", help="regenerate even if cached")
    b.set_defaults(func=cmd_build)

    s = sub.add_parser("synth", help="Yosys 0.23 synth + stat of the cell compute: NAND2-eq, um2")
    s.add_argument("--bits", type=int, choices=(2, 3, 4, 8), help="one bit width")
    s.add_argument("--all", action="store_true", help="bits 2, 3, 4, 8, both styles")
    s.add_argument("--style", choices=(*STYLES, "both"), default="both")
    s.add_argument("--word-bits", type=_int_in(*SYNTH_WORD_BITS), default=64)
    s.add_argument("--act-bits", type=int, default=8)
    s.add_argument("--acc-bits", type=_int_in(*ACC_BITS), default=32)
    s.add_argument(
        "--write-calibration",
        action="store_true",
        help="write romsim/area/synth_calibration.json (needs --all)",
    )
    s.add_argument("--markdown", action="store_true", help="print the docs table")
    s.add_argument("--json", action="store_true", help="print JSON")
    r = s.add_argument_group(
        "ROM arrays (romsim.rtl.brom)",
        "with --rom-style: synthesize a structural ROM array of an image instead of the cell "
        "compute; prints transistors (abc -g cmos2; stat -tech cmos) and NAND2-eq per stored bit",
    )
    r.add_argument("--rom-style", choices=(*ROM_STYLES, "both"), help="B-ROM, standard ROM, both")
    r.add_argument(
        "--rows", type=_int_in(4, MAX_ROM_SYNTH_ROWS), default=256, help="image words (256)"
    )
    r.add_argument("--random", action="store_true", help="random bits instead of a real tile")
    r.add_argument("--one-fraction", type=_fraction, default=0.5, help="--random: p(bit = 1)")
    r.add_argument("--seed", type=int, default=0, help="--random: numpy seed")
    r.add_argument("--matrix", default="q", help="real image: SmolLM2-135M layer-0 matrix (q)")
    r.add_argument("--flatten", action="store_true", help="synth -flatten (re-minimise as logic)")
    s.set_defaults(func=cmd_synth)
    return p


def _mesh(text: str) -> tuple[int, int]:
    try:
        r, c = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise RomsimInputError("mesh", text, "must be ROWSxCOLS, e.g. 3x4") from None
    return r, c


def build_tiles(args):
    from romsim.rtl.tile import make_tile, parse_tile, small_chip

    model, layer, matrix, cell = parse_tile(args.tile)
    r, c = _mesh(args.mesh)
    if args.unit is not None:  # the unit's cells, consecutive, with the unit's reduction
        if args.unit < 0:
            raise RomsimInputError("--unit", args.unit, "must be >= 0")
        cell, args.cells, args.row_sums = args.unit * args.cells_per_unit, args.cells_per_unit, True
    if args.act_bits != 8:
        raise RomsimInputError(
            "--act-bits", args.act_bits, "the kernels' golden path and the tiles use int8 (8)"
        )
    if args.group_size % 8:
        raise RomsimInputError("--group-size", args.group_size, "must be a multiple of 8")
    if (args.group_size * args.bits) % args.cols:
        raise RomsimInputError(
            "--cols",
            args.cols,
            f"group_size*bits ({args.group_size}*{args.bits}) must be a multiple of it (the RTL "
            "cell takes whole groups' words)",
        )
    chip = small_chip(
        args.bits,
        args.group_size,
        mesh={"rows": r, "cols": c, "vector_rows": 1},
        cell={
            "cells_per_unit": args.cells_per_unit,
            "act_bits": args.act_bits,
            "acc_bits": args.acc_bits,
        },
        rom={"word_bits": args.cols},
    )
    if cell >= 0 and cell + args.cells > chip.n_cells:
        raise RomsimInputError(
            "--cells",
            args.cells,
            f"cells {cell} .. {cell + args.cells - 1} do not exist: the chip has {chip.n_cells} "
            "cells",
        )
    return [
        make_tile(
            model, layer, matrix, cell + i, bits=args.bits, group_size=args.group_size, chip=chip
        )
        for i in range(args.cells)
    ]


def cmd_build(args) -> int:
    from romsim.paths import check_output_dir
    from romsim.rtl.emit import emit_rowblock

    check_output_dir(args.out, "--out")
    tiles = build_tiles(args)
    need = max(int(t.mt.rom_rows(t.n_groups)) for t in tiles)
    if args.rows and args.rows < need:
        raise RomsimInputError(
            "--rows", args.rows, f"must be 0 or at least the tile's {need} ROM words"
        )
    try:
        params = [
            t.params(acc_bits=args.acc_bits, act_bits=args.act_bits, depth=args.rows) for t in tiles
        ]
    except ValueError as e:
        raise RomsimInputError("rtl build", args.tile, str(e)) from None
    try:
        b = emit_rowblock(
            params,
            [t.words for t in tiles],
            style=args.style,
            max_tokens=args.max_tokens,
            row_sums=args.row_sums,
            rom_style=args.rom_style,
            build_dir=args.out,
            force=args.force,
            meta={
                "tiles": [t.spec for t in tiles],
                "source": tiles[0].source,
                "perf_cycles_per_token": [t.perf_cycles() for t in tiles],
            },
        )
    except ValueError as e:  # e.g. --row-sums over cells that are not one row-block
        raise RomsimInputError("rtl build", args.tile, str(e)) from None
    t0 = tiles[0]
    print(f"verilog: {b.verilog}")
    print(
        f"top: {b.top}  style: {args.style}  cells: {len(tiles)}  "
        f"{'(cached)' if b.cached else f'generated in {b.gen_seconds:.2f} s'}"
    )
    print(f"weights: {t0.source}")
    for t, p in zip(tiles, params, strict=True):
        print(
            f"  {t.spec}: groups [{t.start}, {t.stop}) of {t.mt.name} ({t.mt.rows}x{t.mt.cols}), "
            f"{p.rom_rows} ROM words, {p.lanes} MAC lanes, perf model "
            f"{t.perf_cycles()} cycles/token"
        )
    return 0


def cmd_synth(args) -> int:
    from romsim.rtl import synth

    if args.rom_style:
        return cmd_synth_rom(args)
    if args.all:
        bits_list, styles = [2, 3, 4, 8], list(STYLES)
    elif args.bits is None:
        raise RomsimInputError("bits", None, "give --bits B or --all")
    else:
        bits_list = [args.bits]
        styles = list(STYLES) if args.style == "both" else [args.style]
    if args.write_calibration and not (
        args.all and args.word_bits == 64 and args.act_bits == 8 and args.acc_bits == 32
    ):
        raise RomsimInputError(
            "write-calibration", True, "needs --all with the default word/act/acc widths"
        )
    results = []
    for bits in bits_list:
        try:
            p = synth.synth_params(
                bits, word_bits=args.word_bits, act_bits=args.act_bits, acc_bits=args.acc_bits
            )
        except ValueError as e:
            raise RomsimInputError("rtl synth", bits, str(e)) from None
        for style in styles:
            r = synth.synth_core(p, style)
            results.append(r)
            if not args.json and not args.markdown:
                _print_result(r)
    cal = synth.calibration(results)
    if args.write_calibration:
        path = synth.write_calibration(cal)
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(cal, indent=1))
    if args.markdown:
        print(markdown_table(cal))
    return 0


def cmd_synth_rom(args) -> int:
    """``romsim rtl synth --rom-style brom|rom|both``: per stored bit, Yosys transistors and
    NAND2-eq of the structural arrays of one image (and the 6T SRAM reference)."""
    from romsim.rtl import synth

    if args.word_bits > 64 or (not args.random and args.word_bits not in PACKABLE_WORD_BITS):
        raise RomsimInputError(
            "word-bits", args.word_bits, "ROM arrays: 8/16/32/64 (real tiles) or <= 64 (--random)"
        )
    styles = ROM_STYLES if args.rom_style == "both" else (args.rom_style,)
    try:
        words, src = synth.rom_image(
            args.rows,
            args.word_bits,
            bits=args.bits or 4,
            random=args.random,
            seed=args.seed,
            one_fraction=args.one_fraction,
            matrix=args.matrix,
        )
    except ValueError as e:
        raise RomsimInputError("rows", args.rows, str(e)) from None
    res = synth.rom_comparison(words, args.word_bits, styles, flatten=args.flatten)
    res["source"] = src
    res["bits"] = None if args.random else (args.bits or 4)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    st = res["image"]
    print(
        f"image: {st['rows']} x {st['width']} = {st['bits']} bits, {src}; "
        f"1-bits {st['one_fraction']:.3f}, 4-bit column patterns: {st['distinct_patterns']} "
        f"distinct, entropy {st['pattern_entropy_bits']:.2f} bits"
    )
    print(
        f"{'style':6s} {'transistors':>12s} {'T/bit':>7s} {'NAND2-eq':>10s} {'N2/bit':>7s} "
        f"{'N2/1-bit':>8s}"
    )
    for s in styles:
        r = res[s]
        print(
            f"{s:6s} {r['transistors']:12d} {r['transistors_per_bit']:7.3f} {r['nand2_eq']:10.1f} "
            f"{r['nand2_eq_per_bit']:7.3f} {r['nand2_eq_per_one_bit']:8.3f}"
        )
    print(f"{'sram':6s} {6 * st['bits']:12d} {6.0:7.3f}  (6T bit cell, stated)")
    d = st["devices"]
    print(
        f"array device model per stored bit: ROM {d['rom_per_bit'] / st['bits']:.3f} "
        f"(NOR, devices at 1-bits only: {d['rom_per_one'] / st['bits']:.3f}), B-ROM "
        f"{d['brom_per_group_col'] / st['bits']:.3f} (0000 unconnected: "
        f"{d['brom_nonzero'] / st['bits']:.3f}), SRAM 6"
    )
    return 0


def _print_result(r) -> None:
    from romsim.area.tech import NAND2_UM2

    print(f"w{r.bits} {r.style}: yosys {r.yosys_version}, {r.seconds:.1f} s")
    for cell, n in sorted(r.cells.items()):
        print(f"  {cell:18s} {n:7d}")
    print(f"  {'total cells':18s} {sum(r.cells.values()):7d}")
    print(
        f"  NAND2-eq {r.nand2_eq:10.1f}   area {r.um2:8.1f} um2 "
        f"(x NAND2 {NAND2_UM2} um2, before placement utilisation)"
    )


def markdown_table(cal: dict) -> str:
    from romsim.area.tech import LOGIC_UTILISATION
    from romsim.rtl.synth import area_table

    lines = [
        "| bits | fused NAND2-eq | fused flops | conv. NAND2-eq | conv. flops | conv./fused "
        "compute | B-ROM fused cell um2 | ROM + MAC cell um2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in area_table(cal):
        f, c = row.get("fused"), row.get("conventional")
        if not (f and c):
            continue
        lines.append(
            f"| {row['bits']} | {f['nand2_eq']:,.0f} | {f['flops']} | {c['nand2_eq']:,.0f} | "
            f"{c['flops']} | {c['nand2_eq'] / f['nand2_eq']:.2f} | {f['cell_um2']:,.0f} | "
            f"{c['cell_um2']:,.0f} |"
        )
    lines.append("")
    lines.append(
        f"Compute um2 = NAND2-eq x NAND2_UM2 / LOGIC_UTILISATION ({LOGIC_UTILISATION}); ROM array "
        "um2 from romsim.area (roma-3b-w4 cell: 9728 x 64 bits); fused cell = max(B-ROM, "
        "compute) (compute under the array), conventional = ROM + compute."
    )
    return "\n".join(lines)
