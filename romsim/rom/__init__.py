"""ROM images of quantized weights and the one ROM word layout.

:mod:`romsim.rom.layout` (numpy only) is imported eagerly; the image names (which need the Numba
kernels) load on first use, so the hardware model can use the layout without importing Numba.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .layout import RomLayout

if TYPE_CHECKING:
    from .image import RomImage, RomImageError, cell_image, image_from_cells

_IMAGE_NAMES = ("RomImage", "RomImageError", "cell_image", "image_from_cells")


def __getattr__(name: str) -> Any:
    if name in _IMAGE_NAMES:
        from . import image

        return getattr(image, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RomImage", "RomImageError", "RomLayout", "cell_image", "image_from_cells"]
