"""ednn_tf: Extensive Deep Neural Networks (Mills et al., Chem. Sci. 2019) for TensorFlow / Keras 3.

Data path (``docs/architecture.md``)::

    structure -> grid (atoms.render) -> tiles (tiling) -> values (EDNN.tile_values) -> total (model.sum_tiles)

The top-level names are imported lazily (PEP 562), so ``import ednn_tf.labels.oracles`` in a
labelling worker never loads Keras or TensorFlow.
"""
from .util import lazy_exports

__version__ = "0.1.0"

_SUBMODULES = ("apply", "atoms", "cli", "data", "distributed", "ising", "labels", "layers", "metrics", "model",
               "networks", "plots", "potential", "symmetry", "testing", "tiling", "timing", "training", "util")
__all__ = ["EDNN", "DensityEDNN", "Potential", "load_potential", "TileLayer", "extract_tiles", "periodic_pad",
           "tile_size", "networks"]
__getattr__, __dir__ = lazy_exports(globals(), {"EDNN": ".model", "DensityEDNN": ".model", "Potential": ".potential",
                                                "load_potential": ".potential", "TileLayer": ".layers",
                                                "extract_tiles": ".tiling", "periodic_pad": ".tiling",
                                                "tile_size": ".tiling",
                                                **{m: f".{m}" for m in _SUBMODULES}})
