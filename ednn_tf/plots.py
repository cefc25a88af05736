"""Plots a person would rather look at than read (matplotlib, Agg backend): every function writes
one PNG atomically and returns its path."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .util import atomic_path  # noqa: E402

__all__ = ["parity_and_error", "context_scan", "training_curves", "scaling", "porous_parity", "radial_distributions",
           "save", "transfer_and_timing", "blur_curves", "line_plot"]


def save(fig, path, dpi=130):
    """Save ``fig`` to ``path`` atomically and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=os.path.splitext(path)[1][1:] or "png")
    finally:
        plt.close(fig)
    return os.fspath(path)


def parity_and_error(true, pred, path, quantity="E / L^2", unit="J", title=None, color=None, label=None):
    """Predicted vs true (left) and error = predicted - true vs true (right), as the paper's Fig. 3/5/7/8;
    ``color`` (e.g. temperatures) colours the points, with a colour bar labelled ``label``."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    _parity_panels(fig, a, b, true, pred, 1.0, quantity, unit, unit, "coolwarm", color, label, title)
    return save(fig, path)


def _parity_panels(fig, a, b, true, pred, err_scale, quantity, unit, err_unit, cmap, color, label, title):
    """(a) predicted vs true and (b) ``err_scale * (predicted - true)`` in ``err_unit`` vs true."""
    true, pred = np.asarray(true, float).ravel(), np.asarray(pred, float).ravel()
    err = err_scale * (pred - true)
    kw = dict(s=4, alpha=0.6, c=color, cmap=cmap if color is not None else None)
    sc = a.scatter(true, pred, **kw)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    a.set(xlabel=f"true {quantity} [{unit}]", ylabel=f"predicted {quantity} [{unit}]", title="(a) predicted vs true")
    b.scatter(true, err, **kw)
    b.axhline(0, color="k", lw=0.8)
    b.set(xlabel=f"true {quantity} [{unit}]", ylabel=f"error (predicted - true) [{err_unit}]",
          title=f"(b) error; median |err| = {np.median(np.abs(err)):.3g} {err_unit}")
    if color is not None:
        fig.colorbar(sc, ax=[a, b], label=label or "")
    if title:
        fig.suptitle(title)


def context_scan(contexts, errors, path, ylabel="median |error| of total energy [J]", paper=None):
    """Error vs context width (log scale), with the paper's values if given ({c: error})."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.semilogy(contexts, errors, "o-", label="ednn_tf")
    if paper:
        ax.semilogy(list(paper), list(paper.values()), "s--", color="gray", label="Mills et al. 2019")
    ax.set(xticks=list(contexts), xlabel="context c (focus f = 1)", ylabel=ylabel)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return save(fig, path)


def training_curves(histories, path, key="loss"):
    """Loss curves of several runs, ``histories = {label: [loss per epoch]}`` (log y)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in histories.items():
        ax.semilogy(np.arange(1, len(values) + 1), values, label=label)
    ax.set(xlabel="epoch", ylabel=key)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return save(fig, path)


def scaling(atoms, seconds, peak_mb, path, exponent=None, ranks=()):
    """Fig. 10/11 analogue: time and peak memory vs atoms (log-log), and time vs ranks if given."""
    atoms, seconds, peak_mb = (np.asarray(a, float) for a in (atoms, seconds, peak_mb))
    n = 3 if ranks else 2
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4))
    a, b = axes[:2]
    a.loglog(atoms, seconds, "o-", label="ednn_tf")
    ref = seconds[-1] * atoms / atoms[-1]
    a.loglog(atoms, ref, "k--", lw=0.8, label="linear")
    a.set(xlabel="atoms", ylabel="wall time [s]",
          title="time vs size" + (f" (slope {exponent:.2f})" if exponent is not None else ""))
    a.legend()
    a.grid(alpha=0.3, which="both")
    b.semilogx(atoms, peak_mb, "s-")
    b.set(ylim=(0, max(peak_mb) * 1.3), xlabel="atoms", ylabel="peak RSS per rank [MB]", title="memory vs size")
    b.grid(alpha=0.3, which="both")
    if ranks:
        c = axes[2]
        r, t = zip(*ranks)
        c.plot(r, t, "o-")
        c.set(xticks=r, xlabel="ranks", ylabel="wall time [s]", title="rank scaling")
        c.grid(alpha=0.3)
    return save(fig, path)


def transfer_and_timing(errors_per_size, size_atoms, ednn_atoms, ednn_seconds, oracle_atoms, oracle_seconds, path,
                        gap=None, title=None, oracle_label="oracle"):
    """Fig. 9 analogue: (a) wall time vs atoms (log-log) of EDNN inference and the oracle with fitted power
    laws; (b) EDNN errors (meV/atom; ``errors_per_size[i]`` at ``size_atoms[i]``) and their median |error|
    per size; ``gap`` (meV/atom) draws the oracle's own finite-size inconsistency as a band."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    for x, y, style, lab in ((ednn_atoms, ednn_seconds, "o-", "EDNN inference"),
                             (oracle_atoms, oracle_seconds, "s", oracle_label)):
        x, y = np.asarray(x, float), np.asarray(y, float)
        if len(x) == 0:
            continue
        line = a.loglog(x, y, style, label=lab)[0]
        if len(np.unique(x)) > 1:
            p = np.polyfit(np.log(x), np.log(y), 1)
            xs = np.geomspace(x.min(), max(x.max(), np.max(ednn_atoms) if len(ednn_atoms) else x.max()), 50)
            a.loglog(xs, np.exp(np.polyval(p, np.log(xs))), "--", lw=0.8, color=line.get_color(),
                     label=f"fit: t ~ N^{p[0]:.2f}")
    a.set(xlabel="atoms", ylabel="wall time per structure [s]", title="(a) time vs size")
    a.legend(fontsize=8)
    a.grid(alpha=0.3, which="both")
    for n, e in zip(size_atoms, errors_per_size):
        b.scatter(np.full(len(e), n), np.asarray(e, float), s=14, alpha=0.7, color="C0")
    med = [np.median(np.abs(np.asarray(e, float))) for e in errors_per_size]
    b.plot(size_atoms, med, "k^-", label="median |error|")
    if gap is not None:
        b.axhspan(-gap, gap, color="gray", alpha=0.2, label=f"oracle 2x2 inconsistency ({gap:.1f})")
    b.axhline(0, color="k", lw=0.6)
    b.set(xscale="log", xlabel="atoms", ylabel="EDNN error (predicted - true) [meV/atom]",
          title="(b) error vs size (trained on the smallest)")
    b.legend(fontsize=8)
    b.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    return save(fig, path)


def blur_curves(area, edge, centre, path, focus_fraction=None, ylabel="MAE", xlabel="blurred area / tile area",
                baseline=None, title=None):
    """Fig. 6 analogue: error vs blurred area for a band at the tile edge (context) and an
    equal-area square at the tile centre (focus). ``focus_fraction`` marks the focus area."""
    area = np.asarray(area, float)
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.plot(area, edge, "o-", label="edge band (context) blurred")
    ax.plot(area, centre, "s-", label="centre square (focus) blurred")
    if baseline is not None:
        ax.axhline(baseline, color="gray", lw=0.8, ls=":", label="no blur")
    if focus_fraction is not None:
        ax.axvline(focus_fraction, color="k", lw=0.8, ls="--", label="focus area")
    ax.set(yscale="log", xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title, fontsize=9)
    return save(fig, path)


def porous_parity(image, extent, true, pred, path, title=None, color=None, label=None):
    """Fig. 7 analogue. Left: an example input image (``image[ix, iy]``, row = x, ``extent`` =
    (0, Lx, 0, Ly) in A); (a) predicted vs true energy per area in eV/A^2; (b) error (predicted - true)
    in meV/A^2 vs true. ``true``/``pred`` are energies per cell area in eV/A^2."""
    fig, (im, a, b) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1, 1.1, 1.1]})
    im.imshow(np.asarray(image)[..., 0].T if np.ndim(image) == 3 else np.asarray(image).T, origin="lower",
              extent=extent, cmap="magma")
    im.set(xlabel="x [A]", ylabel="y [A]", title="example input V(x, y)")
    _parity_panels(fig, a, b, true, pred, 1e3, "E / A", "eV/A^2", "meV/A^2", "viridis", color, label, title)
    return save(fig, path)


def radial_distributions(r, curves, path, title=None):
    """g(r) curves with vertical lines at their peaks (paper Fig. 13). ``r`` in A; ``curves`` is a
    list of ``(g, peaks_A, color, linewidth, peak_linestyle, label)``."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for g, peaks, color, lw, ls, label in curves:
        ax.plot(r, g, color=color, lw=lw, label=label)
        for p in np.asarray(peaks, float)[np.isfinite(peaks)]:
            ax.axvline(p, color=color, lw=0.6, ls=ls)
    ax.set(xlabel="r (Angstrom, in-plane)", ylabel="g(r)", xlim=(0, r[-1] + 0.5 * (r[1] - r[0])), title=title)
    ax.legend(frameon=False)
    return save(fig, path)


def line_plot(curves, path, xlabel, ylabel, title=None):
    """One line per entry of ``curves`` (``{label: (x, y)}``) on shared axes."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, (x, y) in curves.items():
        ax.plot(x, y, lw=1.0, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(frameon=False, fontsize=8)
    return save(fig, path)
