"""ednn_tf: Extensive Deep Neural Networks (Mills et al., Chem. Sci. 2019) for TensorFlow / Keras 3.

Data path: grid -> ``tiling.extract_tiles`` (periodic focus/context tiles) -> one shared
sub-network on all tiles at once -> float64 sum. See ``EDNN``.
"""
__version__ = "0.1.0"

from .tiling import extract_tiles, periodic_pad, tile_size  # noqa: E402,F401
from .layers import TileLayer  # noqa: E402,F401
from .model import EDNN  # noqa: E402,F401
from . import networks  # noqa: E402,F401

__all__ = ["EDNN", "TileLayer", "extract_tiles", "periodic_pad", "tile_size", "networks"]
