"""cocotb testbench of a structural ROM array (``romsim.rtl.brom.BRom`` / ``StdRom``).

Driven by ``romsim.rtl.brom.run_rom_case``: the case file (``ROMSIM_RTL_CASE``) holds the ROM
image (the reference words, never the corrupted structure). The bench drives every address,
waits 1 ns (the arrays are combinational) and compares ``data`` with the image word bit for bit.
Results go to ``ROMSIM_RTL_RESULT`` (JSON); the test fails on any mismatch.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from cocotb.triggers import Timer


@cocotb.test()
async def rom_reads_image(dut):
    z = np.load(os.environ["ROMSIM_RTL_CASE"])
    words = [int(w) for w in z["words"]]
    t0 = time.perf_counter()
    bad: list[str] = []
    mismatches = 0
    bit_errors = 0
    for a, want in enumerate(words):
        dut.addr.value = a
        await Timer(1, unit="ns")
        got = dut.data.value.to_unsigned()
        if got != want:
            mismatches += 1
            diff = got ^ want
            bit_errors += diff.bit_count()
            if len(bad) < 10:
                cols = [c for c in range(diff.bit_length()) if diff >> c & 1]
                bad.append(f"addr {a}: got {got:#x}, image {want:#x} (columns {cols})")
    res = {
        "mismatches": mismatches,
        "bit_errors": bit_errors,
        "words_checked": len(words),
        "first_mismatches": bad,
        "wall_s": time.perf_counter() - t0,
    }
    with open(os.environ["ROMSIM_RTL_RESULT"], "w") as f:
        json.dump(res, f, indent=1)
    assert mismatches == 0, "; ".join(bad[:5])
