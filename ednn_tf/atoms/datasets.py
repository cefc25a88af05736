"""Data files of the hexagonal-sheet experiment: labelled ``hexagonal_dataset`` cells rendered on a
grid (X, Y [eV], per-sample cell, numbers, positions, kind, generator info), every structure stored so
the images can be re-rendered at another grid or channel choice, never relabelled (labelling:
``ednn_tf.labels.labelling.prepare_dataset``); readers for splits, reference fits and training batches;
``rattled_supercell`` (new ``k x k`` sheets like a cell) and ``local_descriptors`` (a linear reference).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

__all__ = ["DEFAULT_RATTLE", "oracle_tag", "pack_structures", "load_structures", "build_dataset",
           "sibling_renders", "rerender_dataset", "dataset_paths", "ideal_cell", "local_descriptors",
           "rattled_supercell", "sample_table", "split_data", "reference_baselines", "training_data"]

#: ``hexagonal_dataset``'s in-plane rattle range (A); data files made with another range carry it in
#: their name.
DEFAULT_RATTLE = (0.05, 0.10)


def oracle_tag(oracle):
    """File-name tag of an oracle: its name, plus a hash of the settings when they are not the defaults."""
    tag = oracle.name.replace("/", "-")
    if oracle.settings != type(oracle)(**{}).settings:
        tag += "-" + hashlib.sha1(json.dumps(oracle.settings, sort_keys=True).encode()).hexdigest()[:8]
    return tag


def pack_structures(structs, forces=None):
    """Per-sample arrays that rebuild the structures: zero-padded numbers/positions plus counts; with
    ``forces`` (one ``(N_i, 3)`` eV/A array per structure) also zero-padded ``forces``."""
    n_max = max(len(a) for a in structs)
    numbers = np.zeros((len(structs), n_max), np.int16)
    positions = np.zeros((len(structs), n_max, 3), np.float64)
    padded = None if forces is None else np.zeros((len(structs), n_max, 3), np.float64)
    if forces is not None and len(forces) != len(structs):
        raise ValueError(f"{len(forces)} force arrays for {len(structs)} structures")
    for i, a in enumerate(structs):
        numbers[i, :len(a)] = a.numbers
        positions[i, :len(a)] = a.positions
        if padded is not None:
            f = np.asarray(forces[i], np.float64)
            if f.shape != (len(a), 3):
                raise ValueError(f"structure {i}: forces of shape {f.shape}, expected ({len(a)}, 3)")
            padded[i, :len(a)] = f
    return dict(numbers=numbers, positions=positions, n_atoms=np.array([len(a) for a in structs], np.int32),
                forces=padded,
                cell=np.array([np.asarray(a.cell) for a in structs]),
                pbc=np.array([a.pbc for a in structs]),
                kind=np.array([a.info.get("kind", "") for a in structs], dtype=object),
                info=np.array([json.dumps(a.info, default=str, sort_keys=True) for a in structs], dtype=object))


def load_structures(path, indices=None):
    """Rebuild the ase.Atoms of a data file written by ``build_dataset`` (rows ``indices``, sorted).
    A file with forces gives each structure a ``SinglePointCalculator`` with its energy (eV) and
    forces (eV/A), so ``atoms.get_forces()`` returns the labels."""
    import h5py
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from .. import data

    with h5py.File(path, "r") as fh:
        has_forces = "forces" in fh
    names = ["numbers", "positions", "n_atoms", "cell", "pbc", "info"] + (["forces", "Y"] if has_forces else [])
    arr = data.read_arrays(path, names, indices=indices)
    out = []
    for k, (z, pos, n, cell, pbc, info) in enumerate(zip(arr["numbers"], arr["positions"], arr["n_atoms"],
                                                          arr["cell"], arr["pbc"], arr["info"])):
        a = Atoms(numbers=z[:n], positions=pos[:n], cell=cell, pbc=pbc)
        a.info.update(json.loads(info.decode() if isinstance(info, bytes) else info))
        if has_forces:
            a.calc = SinglePointCalculator(a, energy=float(arr["Y"][k, 0]), forces=arr["forces"][k, :n])
        out.append(a)
    return out


def load_forces(path, indices=None):
    """The force labels (eV/A) of a :func:`build_dataset` file, one ``(N_i, 3)`` array per sample of
    ``indices`` (sorted; default all); ValueError naming the file if it was written without forces."""
    import h5py

    from .. import data

    with h5py.File(path, "r") as fh:
        if "forces" not in fh:
            raise ValueError(f"{path} holds no force labels (written without forces=True); relabel with forces")
    arr = data.read_arrays(path, ["forces", "n_atoms"], indices=indices)
    return [f[:n] for f, n in zip(arr["forces"], arr["n_atoms"])]


def build_dataset(path, structs, energies, shape, gamma, attrs, progress, channels=None, forces=None):
    """Render ``structs`` on ``shape`` (``gamma`` A; Z-weighted or one channel per element of
    ``channels``) and write them with their ``energies`` (eV), ``pack_structures`` and, if given,
    ``forces`` (one ``(N_i, 3)`` eV/A array per structure, stored zero-padded) to ``path``."""
    from .. import data
    from . import render

    packed = pack_structures(structs, forces)   # checks the forces' shapes before the (slow) render
    X = render.render_many(structs, shape=shape, progress=progress, gamma=gamma, channels=channels)
    if forces is not None:
        attrs = {**attrs, "forces_unit": "eV/A", "forces": "zero-padded (N, n_max, 3); rows n_atoms.. are padding"}
    return data.write_dataset(path, X, energies, attrs=attrs, **packed)


def sibling_renders(stem):
    """Existing data files of the labelled structures ``stem`` at any grid or channel choice
    (``{stem}_grid<n>[_elements].h5``), smallest file first."""
    import glob
    import re

    pat = re.compile(re.escape(os.path.basename(stem)) + r"_grid\d+(_elements)?\.h5$")
    found = [p for p in glob.glob(glob.escape(stem) + "_grid*.h5") if pat.match(os.path.basename(p))]
    return sorted(found, key=os.path.getsize)


def rerender_dataset(source, path, shape, gamma, channels, progress=False):
    """Write ``path``: the labelled structures of the data file ``source`` rendered on ``shape``
    (Z-weighted, or one channel per element of ``channels``). Labels, structures and provenance
    are copied; no structure is regenerated and nothing is relabelled."""
    from .. import data
    from . import render

    structs = load_structures(source)     # with the file's force labels on SinglePointCalculators, if any
    energies = data.read_arrays(source, ["Y"])["Y"][:, 0]
    forces = [a.calc.get_forces() for a in structs] if structs and structs[0].calc is not None else None
    cell = structs[0].cell.lengths()[:2]
    attrs = {**data.read_attrs(source), "grid": list(shape), "gamma_A": gamma, "cutoff_gamma": render.DEFAULT_CUTOFF,
             "pixel_size_A": [cell[0] / shape[0], cell[1] / shape[1]],
             "channels": "Z-weighted" if channels is None else list(channels),
             "rendered_from": os.path.basename(source)}
    return build_dataset(path, structs, energies, shape, gamma, attrs, progress, channels=channels, forces=forces)


def ideal_cell(base):
    """The unrattled version of a ``hexagonal_cell`` output (same kind, composition, vacancies),
    rebuilt from its generator record ``base.info``."""
    from . import structures

    info = base.info
    ideal = structures.hexagonal_cell(info["kind"], info["seed"], vacancies=info["vacancies"], rattle=0.0,
                                      rattle_z=0.0, lattice_constant=info["lattice_constant"])
    if not np.array_equal(ideal.numbers, base.numbers):
        raise RuntimeError("rebuilding the unrattled base cell changed its composition")
    return ideal


def local_descriptors(structs, bond_cutoff=1.85):
    """Hand-made local descriptors of ``hexagonal_dataset`` cells, ``(N, 8)``: bond counts for the
    element pairs B-B, B-C, B-N, C-C, C-N, N-N (bonds: pairs closer than ``bond_cutoff`` A), the sum of
    squared bond-length changes (A^2) against the unrattled cell (``ideal_cell``) and the sum of
    squared out-of-plane displacements (A^2). A reference for what a purely local, linear energy
    model can reach; the networks never see these numbers."""
    from ase.neighborlist import neighbor_list

    pairs = [(5, 5), (5, 6), (5, 7), (6, 6), (6, 7), (7, 7)]
    out = np.zeros((len(structs), len(pairs) + 2))
    for k, atoms in enumerate(structs):
        z = atoms.numbers
        ideal = ideal_cell(atoms)
        i, j, d0 = neighbor_list("ijd", ideal, bond_cutoff)
        keep = i < j
        i, j, d0 = i[keep], j[keep], d0[keep]
        lo, hi = np.minimum(z[i], z[j]), np.maximum(z[i], z[j])
        out[k, :len(pairs)] = [np.sum((lo == a) & (hi == b)) for a, b in pairs]
        out[k, -2] = np.sum((atoms.get_distances(i, j, mic=True) - d0) ** 2) if len(i) else 0.0
        out[k, -1] = np.sum((atoms.positions[:, 2] - ideal.positions[:, 2]) ** 2)
    return out


def rattled_supercell(base, k, seed, min_distance=1.0):
    """A new ``k x k`` sheet like ``base`` (a ``hexagonal_cell`` output): :func:`ideal_cell` repeated
    ``k x k`` and rattled with the base cell's in-plane / out-of-plane sigmas, independently for
    every atom (``ednn_tf.atoms.structures.rattle``: redrawn until no two atoms are closer than
    ``min_distance`` A). Deterministic from ``(seed, k)``.
    """
    from . import structures

    info = base.info
    big = structures.supercell(ideal_cell(base), k)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7, int(k)]))
    out = structures.rattle(big, float(info["rattle"]), float(info["rattle_z"]), seed=rng, min_distance=min_distance)
    out.info.update({**info, "generator": "rattled_supercell", "k": int(k), "rattle_seed": int(seed)})
    return out


def dataset_paths(data_dir, tag, cfg):
    """``(stem, path)``: the labelled cells' file stem and the data file of ``cfg``'s grid and channels."""
    rattle = tuple(float(r) for r in cfg["rattle"])
    rtag = "" if rattle == DEFAULT_RATTLE else f"_rattle{rattle[0]:g}-{rattle[1]:g}"
    ftag = "_forces" if cfg.get("forces") else ""
    stem = os.path.join(data_dir, f"hexagonal_{tag}_n{cfg['n_structures']}_seed{cfg['seed']}{rtag}{ftag}")
    return stem, f"{stem}_grid{cfg['grid']}{'_elements' if cfg['channels'] == 'element' else ''}.h5"


def sample_table(path):
    """Per sample of a :func:`build_dataset` file: ``{"E": eV, "area": cell area A^2, "n_atoms",
    "kind"}`` (float64 arrays, ``kind`` as str)."""
    from .. import data

    m = data.read_arrays(path, ["Y", "n_atoms", "cell", "kind"])
    c = m["cell"]
    return {"E": m["Y"][:, 0], "area": np.abs(c[:, 0, 0] * c[:, 1, 1] - c[:, 0, 1] * c[:, 1, 0]),
            "n_atoms": m["n_atoms"].astype(np.float64),
            "kind": np.array([k.decode() if isinstance(k, bytes) else str(k) for k in m["kind"]])}


def split_data(path, n_train, n_val, seed):
    """The split of a :func:`build_dataset` file (``data.split_indices``, seed ``seed``) and its test
    cells: ``train`` / ``val`` / ``test`` indices, ``x`` (test images, float32), ``y`` (eV), ``areas``
    (A^2), ``n_atoms``, ``kinds``, ``carbon`` (carbon fraction), ``table`` (:func:`sample_table`),
    ``attrs`` and ``summary`` (set sizes, pixel size, energy range in eV)."""
    from .. import data

    table, attrs = sample_table(path), data.read_attrs(path)
    E = table["E"]
    N = len(E)
    tr, va, te = data.split_indices(N, (n_train / N, n_val / N, 1 - (n_train + n_val) / N), seed=seed)
    summary = {"path": path, "n_train": len(tr), "n_val": len(va), "n_test": len(te),
               "pixel_size_A": attrs["pixel_size_A"], "labelling_seconds": attrs.get("labelling_seconds"),
               "energy_eV": {"min": float(E.min()), "max": float(E.max()), "std": float(E.std())}}
    return {"path": path, "attrs": attrs, "table": table, "summary": summary, "train": tr, "val": va, "test": te,
            "x": data.read_arrays(path, ["X"], indices=te)["X"].astype(np.float32), "y": E[te],
            "areas": table["area"][te], "n_atoms": table["n_atoms"][te], "kinds": table["kind"][te],
            "carbon": np.array([np.mean(a.numbers == 6) for a in load_structures(path, te)])}


def reference_baselines(path, table, train_idx, test_idx):
    """Test errors (``metrics.energy_errors``) of references that need no network, fitted on the
    training rows: the training mean, a linear fit on the element counts and one on the counts plus
    :func:`local_descriptors`. ``table`` is :func:`sample_table` of ``path``."""
    from .. import data
    from ..metrics import energy_errors

    E, tr, te = table["E"], train_idx, test_idx

    def errors(pred):
        return energy_errors(E[te], pred, table["n_atoms"][te], table["area"][te])

    counts = data.read_arrays(path, ["numbers"])["numbers"]
    elements = [z for z in np.unique(counts) if z > 0]
    F = np.stack([(counts == z).sum(axis=1) for z in elements] + [np.ones(len(E))], axis=1).astype(np.float64)
    coef = np.linalg.lstsq(F[tr], E[tr], rcond=None)[0]
    out = {"training_mean": errors(np.full(len(te), E[tr].mean())),
           "composition_linear": {**errors(F[te] @ coef), "constant_eV": float(coef[-1]),
                                  "eV_per_atom": {int(z): float(c) for z, c in zip(elements, coef)}}}
    A = np.column_stack([F, local_descriptors(load_structures(path))])
    coef = np.linalg.lstsq(A[tr], E[tr], rcond=None)[0]
    out["local_descriptors_linear"] = {
        **errors(A[te] @ coef),
        "features": "element counts, bonds (< 1.85 A) per element pair, sum of squared bond-length "
                    "changes and of squared out-of-plane displacements from the unrattled cell"}
    return out


def training_data(path, train_idx, val_idx, batch_size, seed, augment):
    """``(x, None, {"validation_data": ...})`` for ``training.train_or_reuse``: with TensorFlow a
    streamed, shuffled ``tf.data`` pipeline (``data.periodic_augment`` with ``augment``, keyed on
    ``(seed, epoch, batch)``), on other Keras backends in-memory ``data.ArrayBatches``; validation
    batches of 64. Either resumes exactly (``training.fit`` sets the epoch)."""
    import keras

    from .. import data

    if keras.backend.backend() == "tensorflow":
        ds = data.h5_dataset(path, batch_size=batch_size, indices=train_idx, shuffle=True, seed=seed,
                             augment=data.periodic_augment if augment else None)
        return ds, None, {"validation_data": data.h5_dataset(path, batch_size=64, indices=val_idx)}
    tr = data.read_arrays(path, ["X", "Y"], indices=train_idx)
    ds = data.ArrayBatches.make(tr["X"], tr["Y"], batch_size, seed=seed, augment=augment, workers=4)
    va = data.read_arrays(path, ["X", "Y"], indices=val_idx)
    return ds, None, {"validation_data": (va["X"].astype(np.float32), va["Y"].astype(np.float32))}
