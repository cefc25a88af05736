"""Energy heads and target maps of the hexagonal-sheet experiment (paper Sec. 3.2.1).

Both models end in the same fixed map to eV: ``E = s * mean_tiles(raw) + E0 [+ sum_p alpha_p *
sum_pixels(x^p)]`` (``to_ev``); each EDNN tile adds ``s/n raw + E0/n [+ sum_p alpha_p
sum_focus(x^p)]`` (the plain CNN is one tile, its focus the whole image). ``E0/n`` is a constant per
tile, i.e. per area, and the moment term a sum over pixels, so the EDNN stays extensive. ``E0``,
``s`` and ``alpha_p`` are fitted on the training energies (``fit_target_map`` on
``moment_features``; ``data_target_map`` for a data file): for well-separated atoms ``sum(x^p) =
(I/p) sum_i Z_i^p``, so p = 1..3 identify the B, C and N counts from the image itself, a
per-element reference energy from nothing but the input (with one channel per element p = 1 does
it, unchanged by a blur); the networks learn the rest (166 -> 10 eV std on the hexagonal cells).
Kernels are He-normal: with Glorot ones a fresh narrow network's output barely depends on its input.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ELEMENTS", "to_ev", "learned_part", "moment_features", "fit_target_map", "data_target_map",
           "build_models", "train_models", "predict_ev"]

#: Atomic numbers of the per-element channels (``channels="element"``).
ELEMENTS = (5, 6, 7)


def to_ev(raw_model, scale, offset, name, moments=None, crop=0):
    """``raw_model`` followed by the fixed affine map ``raw * scale + offset`` (eV), plus, with
    ``moments = {p: alpha_p}``, the fixed term ``sum_p alpha_p * sum(x**p)`` over the input's central
    region (``crop`` pixels removed on each side: the focus of an EDNN tile). With C > 1 channels
    ``alpha_p`` is a length-C list, one coefficient per channel."""
    import keras

    out = keras.layers.Rescaling(float(scale), offset=float(offset), name="to_eV")(raw_model.output)
    if moments:
        x = keras.layers.Cropping2D(crop, name="focus")(raw_model.input) if crop else raw_model.input
        feats = []
        for p in sorted(moments):
            xp = x if p == 1 else keras.layers.Multiply(name=f"x_pow{p}")([x] * p)
            feats.append(keras.layers.GlobalAveragePooling2D(name=f"mean_x_pow{p}")(xp))
        cat = keras.layers.Concatenate(name="moments")(feats) if len(feats) > 1 else feats[0]
        term = keras.layers.Dense(1, use_bias=False, trainable=False, name="moments_eV")(cat)
        out = keras.layers.Add(name="tile_eV")([out, term])
    model = keras.Model(raw_model.input, out, name=name)
    if moments:
        h, w = (int(d) - 2 * crop for d in raw_model.input.shape[1:3])
        model.get_layer("moments_eV").set_weights(
            [np.array([[a * h * w] for p in sorted(moments) for a in np.atleast_1d(moments[p])])])
    return model


def learned_part(ednn):
    """The EDNN without its fixed moment term (``to_ev(..., moments)``): same focus, context and
    weights, tile value ``s/n raw + E0/n``. Returns ``ednn`` itself if it has no moment term."""
    import keras

    from .. import EDNN

    sub = ednn.subnet
    if "moments_eV" not in [layer.name for layer in sub.layers]:
        return ednn
    core = keras.Model(sub.input, sub.get_layer("to_eV").output, name=sub.name + "_learned")
    return EDNN(core, focus=ednn.focus, context=ednn.context)


def moment_features(X, powers, batch=256):
    """``sum(X**p)`` per image, power and channel (float64), ``(N, len(powers) * C)``, power-major."""
    C = X.shape[-1]
    out = np.empty((len(X), len(powers) * C))
    for lo in range(0, len(X), batch):
        x = np.asarray(X[lo:lo + batch], np.float64)
        out[lo:lo + batch] = np.concatenate([(x ** p).sum(axis=(1, 2)) for p in powers], axis=1)
    return out


def fit_target_map(E, F=None, powers=()):
    """The fixed part of both models: ``E0`` (constant per training cell), the moment coefficients
    ``alpha_p`` (least squares of E on ``[F, 1]``, or none; a float per power for one channel, a list
    per channel otherwise) and ``scale`` = std of what the CNN learns."""
    E = np.asarray(E, np.float64)
    if powers:
        A = np.column_stack([F, np.ones(len(E))])
        coef = np.linalg.lstsq(A, E, rcond=None)[0]
        per = coef[:-1].reshape(len(powers), -1)
        alphas = {int(p): (float(a[0]) if len(a) == 1 else [float(v) for v in a]) for p, a in zip(powers, per)}
        e0 = float(coef[-1])
        resid = E - A @ coef
    else:
        alphas, e0, resid = {}, float(E.mean()), E - E.mean()
    return {"E0_eV": e0, "moment_coefficients": alphas, "scale_eV": float(resid.std()) or 1.0,
            "train_residual_mae_eV": float(np.mean(np.abs(resid)))}


def data_target_map(path, train_idx, energies, powers=()):
    """:func:`fit_target_map` of the training ``energies`` (eV) on the moments of the images
    ``train_idx`` of the data file ``path`` (read only when ``powers`` asks for a moment term)."""
    from .. import data

    F = moment_features(data.read_arrays(path, ["X"], indices=train_idx)["X"], powers) if powers else None
    return fit_target_map(energies, F, powers)


def build_models(cfg, tmap, seed, x_init=None):
    """The EDNN and the plain CNN, both ending in the same fixed map to eV (see the module docstring).
    With ``cfg["init"] == "lsuv"`` the He-normal kernels are rescaled layer by layer to unit output
    std on the sample images ``x_init`` (tiles of them for the EDNN; ``networks.normalise_to_data``)."""
    import keras

    from .. import EDNN, networks

    f, c, n = cfg["focus"], cfg["context"], cfg["grid"]
    n_tiles = (n // f) ** 2
    e0, scale, alphas = tmap["E0_eV"], tmap["scale_eV"], {int(k): v for k, v in tmap["moment_coefficients"].items()}
    keras.utils.set_random_seed(seed)
    kernels = "he" if cfg["init"] == "lsuv" else cfg["init"]
    nch = len(ELEMENTS) if cfg["channels"] == "element" else 1
    sub = networks.paper_cnn(f + 2 * c, channels=nch, width=cfg["width"], dense=cfg["dense"], seed=seed,
                             initializer=kernels)
    keras.utils.set_random_seed(seed + 1)
    cnn = networks.plain_cnn(n, n, channels=nch, width=cfg["width"], dense=cfg["dense"], seed=seed + 1,
                             initializer=kernels)
    if cfg["init"] == "lsuv":
        if x_init is None:
            raise ValueError("init='lsuv' needs sample training images x_init")
        from .. import tiling
        tiles = tiling.fold_tiles(tiling.extract_tiles(np.asarray(x_init, np.float32), f, c), 2)[0]
        networks.normalise_to_data(sub, np.asarray(tiles))
        networks.normalise_to_data(cnn, x_init)
    ednn = EDNN(to_ev(sub, scale / n_tiles, e0 / n_tiles, "paper_cnn_eV", alphas, crop=c), focus=f, context=c)
    plain = to_ev(cnn, scale, e0, "plain_cnn_eV", alphas)
    return ednn, plain


def train_models(cfg, tmap, path, train_idx, val_idx, out, names=("ednn", "cnn"), seed=0, progress=True,
                 on_model=None, seconds=None):
    """Train the models ``names`` of :func:`build_models` (``training.train_or_reuse``: resumable, and
    reused when ``out/<name>.keras`` exists) on the rows of the data file ``path``
    (``datasets.training_data``), MSE in eV^2, Adam on ``training.cosine_schedule`` from ``cfg``
    (``lr``, ``lr_decay``, ``warmup_epochs`` [epochs], ``epochs``, ``batch_size``, ``augment``).
    ``out/<name>.train.json`` keeps the wall seconds of the last training session (also put in the
    dict ``seconds``). ``on_model(name, model)`` runs after each model. Returns ``(models, histories,
    seconds)``."""
    import json
    import os

    from .. import data, training
    from ..util import write_json_atomic
    from .datasets import training_data

    built, models, histories, seconds = {}, {}, {}, {} if seconds is None else seconds
    if not all(os.path.exists(os.path.join(out, f"{name}.keras")) for name in names):
        x_init = (data.read_arrays(path, ["X"], indices=np.sort(train_idx[:64]))["X"]
                  if cfg["init"] == "lsuv" else None)
        built["ednn"], built["cnn"] = build_models(cfg, tmap, seed, x_init)
    steps = -(-len(train_idx) // cfg["batch_size"])
    for name in names:
        info_path = os.path.join(out, f"{name}.train.json")
        lr = training.cosine_schedule(cfg["lr"], cfg["epochs"] * steps, decay=cfg["lr_decay"],
                                      warmup_steps=cfg["warmup_epochs"] * steps)
        model, info = training.train_or_reuse(
            os.path.join(out, f"{name}.keras"), lambda n=name: built[n],
            lambda: training_data(path, train_idx, val_idx, cfg["batch_size"], seed, cfg["augment"]),
            epochs=cfg["epochs"], workdir=os.path.join(out, f"train_{name}"), lr=lr, progress=progress,
            desc=name.upper())
        if not info["reused"]:
            write_json_atomic({"seconds": info["seconds"], "epochs": cfg["epochs"],
                               "note": "wall seconds of the last (possibly resumed) training session"}, info_path)
        if os.path.exists(info_path):
            with open(info_path) as fh:
                seconds[name] = json.load(fh)["seconds"]
        for key, label in (("loss", "train"), ("val_loss", "validation")):
            if key in info["history"]:
                histories[f"{name} {label}"] = info["history"][key]
        models[name] = model
        if on_model is not None:
            on_model(name, model)
    return models, histories, seconds


def predict_ev(model, x, batch_size=32):
    """Float64 ``(batch,)`` predictions in eV of either model: ``EDNN.predict_total`` (float64 sum over
    tiles) or the plain CNN's ``predict``."""
    if hasattr(model, "predict_total"):
        return model.predict_total(x, batch_size=batch_size)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64)[:, 0]
