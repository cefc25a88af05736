"""Energy heads of the atomistic experiments: the sub-network output mapped to eV per tile.

``fit_baseline`` fits the fixed ``E ~ alpha * sum(image) + beta`` atom-count baseline;
``ev_subnet`` wraps a tile network so its value is eV (a fixed per-tile affine map, plus the
optional fixed linear atom-count term), extensive on any grid; ``ev_ednn`` builds the EDNN of the
paper CNN with that head.
"""
from __future__ import annotations

import numpy as np

from ..model import EDNN   # also registers the class, so ``keras.models.load_model`` can rebuild a saved EDNN

__all__ = ["fit_baseline", "ev_subnet", "ev_ednn"]


def fit_baseline(sums, energies, kind):
    """``E ~ alpha * sum(image) + beta`` by least squares (``kind="linear"``) or ``alpha = 0``,
    ``beta = mean E`` (``"none"``); ``scale`` = standard deviation of what the CNN has to learn."""
    energies = np.asarray(energies, np.float64)
    if kind == "linear":
        A = np.column_stack([sums, np.ones_like(sums)])
        (alpha, beta), *_ = np.linalg.lstsq(A, energies, rcond=None)
    else:
        alpha, beta = 0.0, float(energies.mean())
    resid = energies - (alpha * sums + beta)
    return {"kind": kind, "alpha_eV_per_intensity": float(alpha), "beta_eV": float(beta),
            "scale_eV": float(resid.std()) or 1.0, "train_residual_mae_eV": float(np.mean(np.abs(resid)))}


def ev_subnet(net, scale_eV, offset_eV, n_tiles, alpha_eV_per_intensity=0.0, focus=None, context=0,
              name="subnet_eV"):
    """``scale/n * net(tile) + offset/n [+ alpha * sum(focus pixels)]`` (eV) as a ``keras.Model``.

    ``n_tiles`` = tiles per training cell, so ``offset`` is a fixed per-area constant; a nonzero
    ``alpha_eV_per_intensity`` adds the fixed linear atom-count term over the ``focus`` x ``focus``
    centre of the tile (the tile cropped by ``context``).
    """
    import keras

    inp = net.input
    out = keras.layers.Rescaling(scale_eV / n_tiles, offset=offset_eV / n_tiles, name="to_eV")(net.output)
    if alpha_eV_per_intensity != 0.0:
        cropped = keras.layers.Cropping2D(context, name="focus")(inp)
        mean = keras.layers.GlobalAveragePooling2D(name="focus_mean")(cropped)
        lin = keras.layers.Rescaling(alpha_eV_per_intensity * focus * focus, name="atom_count_eV")(mean)
        out = keras.layers.Add(name="tile_eV")([out, lin])
    return keras.Model(inp, out, name=name)


def ev_ednn(focus, context, scale_eV, offset_eV, n_tiles, alpha_eV_per_intensity=0.0, *, width=1.0, dense=1024,
            seed=0, he=None, name="subnet_eV"):
    """``EDNN`` of ``networks.paper_cnn(focus + 2 context, width, dense, seed)`` with the ``ev_subnet``
    head (arguments as there), after ``keras.utils.set_random_seed(seed)``. ``he``: None (Glorot
    kernels) or ``(he_seed, "normal" | "uniform")``, kernels redrawn by ``networks.he_initialise``
    (the draws of the porous-graphene and graphene-MC figures)."""
    import keras

    from .. import networks

    keras.utils.set_random_seed(seed)
    cnn = networks.paper_cnn(focus + 2 * context, width=width, dense=dense, seed=seed)
    if he is not None:
        networks.he_initialise(cnn, *he)
    sub = ev_subnet(cnn, scale_eV, offset_eV, n_tiles, alpha_eV_per_intensity, focus=focus, context=context, name=name)
    return EDNN(sub, focus=focus, context=context)
