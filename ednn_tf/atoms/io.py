"""Structure files: read any format ASE reads and render it (:func:`render_file`)."""
from __future__ import annotations

import os

import numpy as np

from .cells import check_grid_shape
from .render import render, render_many

__all__ = ["StructureFileNotFoundError", "render_file"]


class StructureFileNotFoundError(FileNotFoundError, ValueError):
    """Raised by :func:`render_file` for a missing path; both a FileNotFoundError and a ValueError."""


def render_file(path, shape=(256, 256), cell=None, index=None, format=None, progress=False, **kwargs):
    """Read a structure file with ``ase.io.read`` (any format ASE reads: xyz, extxyz, POSCAR, cif, ...;
    ``format`` names it if the extension is ambiguous) and render it (``shape``, ``kwargs``: see
    :func:`render`; ``cell`` overrides the file's, and a plain ``.xyz`` file carries none: pass
    ``cell=(Lx, Ly)`` in A). ``index`` goes to ``ase.io.read`` (default the last frame); a slice or
    ``":"`` renders all frames with :func:`render_many`.

    Returns ``(nx, ny, C)``, or ``(B, nx, ny, C)`` for several frames. Raises StructureFileNotFoundError
    for a missing path and ValueError when the file cannot be parsed or has no cell and none was given.
    """
    import ase.io

    fspath = os.fspath(path)
    if not os.path.isfile(fspath):
        raise StructureFileNotFoundError(2, "structure file not found", fspath)
    try:
        result = ase.io.read(fspath, index=index, format=format)
    except Exception as exc:  # ASE raises many types for corrupt files
        raise ValueError(f"could not read structure file {fspath!r}: {type(exc).__name__}: {exc}") from exc
    frames = result if isinstance(result, list) else [result]
    if not frames:
        raise ValueError(f"structure file {fspath!r} contains no frames for index={index!r}")
    ndim = len(check_grid_shape(shape))
    if cell is None:
        for atoms in frames:
            vecs = atoms.cell.array[:ndim]
            if np.any(np.abs(vecs).sum(axis=1) == 0.0):
                raise ValueError(f"structure file {fspath!r} has no cell along x/y (cell = "
                                 f"{atoms.cell.array.tolist()!r}); plain .xyz files carry none: pass "
                                 "cell=(Lx, Ly) in Angstrom or use extended xyz with a Lattice= entry")
    else:
        kwargs["cell"] = cell
    try:
        if isinstance(result, list):
            return render_many(frames, shape=shape, progress=progress, **kwargs)
        return render(result, shape=shape, **kwargs)
    except ValueError as exc:
        raise ValueError(f"cannot render structure file {fspath!r}: {exc}") from exc
