"""Narrow filters for third-party noise that ``romsim fl run`` users cannot act on.

Each filter matches one known message of one library; everything else still shows.

- Flower: the ``run_simulation`` deprecation banner (romsim embeds the simulation engine on
  purpose; ``flwr run`` needs a SuperLink).
- transformers: ``is_gradient_checkpointing`` FutureWarning (peft reads the old attribute).
- torch: ``torch.jit.script_method`` DeprecationWarning (torch.utils.mkldnn, imported by torch
  itself).
- bitsandbytes: "Failed to load CPU gemm_4bit_forward from kernels-community" (an optional
  kernel romsim never uses: the base runs in float32).
"""

from __future__ import annotations

import logging
import warnings

_INSTALLED: list[bool] = []


class _DropMessages(logging.Filter):
    """Drop log records whose formatted message contains one of ``needles``."""

    def __init__(self, *needles: str):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a broken record is not ours to judge
            return True
        return not any(n in msg for n in self.needles)


def quiet_third_party() -> None:
    """Install the filters. Idempotent; call it before torch/transformers load and again after
    ``flwr.simulation`` is imported: Flower puts a catch-all ``"once"`` DeprecationWarning filter
    in front of the list, and a repeated call moves these filters back ahead of it."""
    warnings.filterwarnings(
        "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.jit\.script_method` is deprecated",
        category=DeprecationWarning,
        module=r"torch\.jit\._script",
    )
    if _INSTALLED:
        return
    _INSTALLED.append(True)
    logging.getLogger("flwr").addFilter(
        _DropMessages("The `run_simulation` function is deprecated")
    )
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        _DropMessages("Failed to load CPU gemm_4bit_forward from kernels-community")
    )
