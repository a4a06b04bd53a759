"""ROM images: quantized base weights as the 64-bit ROM words the fused cells hold."""

from .image import RomImage, RomImageError, cell_image, cell_slices, image_from_cells

__all__ = ["RomImage", "RomImageError", "cell_image", "cell_slices", "image_from_cells"]
