"""Studies of a trained EDNN on atomistic sheets (Mills et al. 2019, Secs. 3.2.1, 3.3; Figs. 6, 9) for
``experiments/hexagonal.py``: test errors, transfer to ``k x k`` sheets, timing, blurred tiles; and
``experiments/graphene_mc.py``'s seconds per energy evaluation.
Energies in eV; errors per unit as ``metrics.energy_errors`` (eV, meV/A^2, meV/atom)."""
from __future__ import annotations

import os
import time

import numpy as np

from ..metrics import energy_errors, fit_exponent, ratio_entries, ratio_summary

__all__ = ["test_errors", "comparison", "symmetrised_test", "transfer_study", "timing_study", "blur_study",
           "time_evaluations"]


def test_errors(name, model, x, y, n_atoms, areas):
    """``(predictions [eV], entry, seconds of the predictions)``: ``energy_errors`` of ``model`` (EDNN
    or CNN) on ``x``, its parameter count and prediction std / label std (warns if it is constant)."""
    from ..atoms.targets import predict_ev

    t0 = time.perf_counter()
    p = predict_ev(model, x)
    seconds = time.perf_counter() - t0
    entry = {**energy_errors(y, p, n_atoms, areas), "params": int(model.count_params()),
             "prediction_std_over_label_std": float(np.std(p) / np.std(y))}
    if np.std(p) < 1e-4 * np.std(y):
        print(f"WARNING: {name} predicts a constant (collapsed ReLU network); its numbers are meaningless")
    print(f"{name}: test MAE {entry['meV_per_A2']['mean_abs_error']:.3f} meV/A^2, "
          f"{entry['meV_per_atom']['mean_abs_error']:.3f} meV/atom ({entry['eV']['mean_abs_error']:.4f} eV)")
    return p, entry, seconds


def comparison(models, preds, d, focus, sym_stride=0, sym_mirrors=False, paper_ratio=None):
    """``(entries, predictions, symmetrised)`` on the test cells ``d`` (``datasets.split_data``) from
    the predictions ``preds`` (eV). ``entries``: CNN / EDNN ratios (``ratio_entries``, with both
    models) and ``by_kind`` (MAE in meV/A^2 per kind of cell); ``predictions``: per-cell labels and
    predictions (eV), with ``sym_stride`` also :func:`symmetrised_test`'s (its entry, else None)."""
    y, areas, kinds = d["y"], d["areas"], d["kinds"]
    out, sym = {}, None
    if len(preds) == 2:
        out.update(ratio_entries(y, preds["ednn"], preds["cnn"], areas), paper_mae_ratio=paper_ratio)
        print(f"MAE ratio CNN / EDNN = {out['mae_ratio_cnn_over_ednn']:.2f} (paper {paper_ratio:.2f}); "
              + ratio_summary(out["ratio_ci"]))
    tp = {"true_eV": y.tolist(), "test_indices": np.asarray(d["test"]).tolist(),
          **{f"{name}_eV": p.tolist() for name, p in preds.items()}}
    if sym_stride and len(preds) == 2:
        sym, p_sym = symmetrised_test(models, d["x"], y, d["n_atoms"], areas, focus, sym_stride, sym_mirrors)
        tp.update({f"{name}_symmetrised_eV": p.tolist() for name, p in p_sym.items()})
    out["by_kind"] = {str(k): {name: float(np.mean(np.abs(p - y)[kinds == k] * 1e3 / areas[kinds == k]))
                               for name, p in preds.items()} for k in np.unique(kinds)}
    return out, tp, sym


def symmetrised_test(models, x, y, n_atoms, areas, focus, stride, mirrors):
    """``(entry, {name: predictions})`` of ``{"ednn": ..., "cnn": ...}`` averaged over the same periodic
    whole-pixel shifts ``0, stride, ... < focus`` per axis (times the mirrors): the same cost for both."""
    from .. import symmetry
    from ..atoms.targets import predict_ev

    shifts, flips = symmetry.pixel_shifts(focus, stride, 2), symmetry.mirror_sets(2, mirrors)
    sym = {"stride_px": stride, "mirrors": mirrors, "evaluations_per_cell": len(shifts) * len(flips)}
    preds = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        preds[name], spread = symmetry.symmetrised(lambda z, m=model: predict_ev(m, z), x, shifts, flips,
                                                   return_spread=True)
        sym[name] = {**energy_errors(y, preds[name], n_atoms, areas), "seconds": time.perf_counter() - t0,
                     "spread_over_symmetries_mean_eV": float(np.mean(spread))}
        print(f"{name} symmetrised ({sym['evaluations_per_cell']} evaluations per cell): test MAE "
              f"{sym[name]['meV_per_A2']['mean_abs_error']:.3f} meV/A^2 (spread of the plain model over the "
              f"symmetries {sym[name]['spread_over_symmetries_mean_eV']:.3f} eV)")
    sym.update(ratio_entries(y, preds["ednn"], preds["cnn"], areas))
    print(f"symmetrised: MAE ratio CNN / EDNN = {sym['mae_ratio_cnn_over_ednn']:.2f}, "
          f"median ratio {sym['median_ratio_cnn_over_ednn']:.2f}; " + ratio_summary(sym["ratio_ci"]))
    return sym, preds


def _transfer_size(ednn, bases, y_base, oracle, k, seed, files, render_kw, grid, sym, progress):
    """One size of :func:`transfer_study`: ``(entry, oracle seconds)``."""
    from ..atoms import render, structures
    from ..atoms.datasets import oracle_tag, rattled_supercell
    from ..labels import oracles
    from ..labels.labelling import label_timed

    settings = dict(oracle.settings)
    if "supercell" in settings:      # keep the k-point density: k x k cell with ceil(K/k) x ceil(K/k) mesh
        settings["supercell"] = max(1, -(-oracle.settings["supercell"] // k))
    ork = oracles.get_oracle(oracle.name, **settings)
    structs = bases if k == 1 else [rattled_supercell(b, k, seed=seed * 100003 + i) for i, b in enumerate(bases)]
    tpath = (f"{files[0]}/hexagonal_transfer_{oracle_tag(ork)}_k{k}_n{len(bases)}_seed{seed}"
             f"_from_{os.path.basename(files[1])}.json")
    E_k, secs = label_timed(structs, ork, tpath, progress, desc=f"labelling {k}x{k} ({len(structs[0])} atoms)")
    X_k = render.render_many(structs, shape=(k * grid, k * grid), **render_kw)
    pred = ednn.predict_total(X_k, batch_size=1)
    natoms = np.array([len(s) for s in structs], float)
    area = np.array([oracles.cell_area(s) for s in structs])
    entry = energy_errors(E_k, pred, natoms, area)
    entry.update(k=k, n=len(bases), n_atoms=natoms.tolist(), oracle_settings=settings,
                 oracle_seconds=secs.tolist(), true_eV=E_k.tolist(), pred_eV=pred.tolist(),
                 error_meV_per_atom=(1e3 * (pred - E_k) / natoms).tolist())
    if sym[0]:   # the symmetrised EDNN transfers too (it is extensive as well)
        p_sym = ednn.predict_symmetrised(X_k, stride=sym[0], mirrors=sym[1], batch_size=1)
        entry["symmetrised"] = {**energy_errors(E_k, p_sym, natoms, area), "pred_eV": p_sym.tolist()}
    if k == 1:   # a re-labelling of test cells: the oracle is deterministic
        entry["relabel_max_abs_diff_eV"] = float(np.max(np.abs(E_k - y_base)))
    if k == 2:   # the oracle's own finite-size inconsistency on exact repeats
        rep = [structures.supercell(b, 2) for b in bases]
        E_rep, _ = label_timed(rep, ork, tpath.replace(f"_k{k}_", f"_k{k}repeat_"), progress,
                               desc="labelling exact 2x2 repeats")
        gap = 1e3 * (E_rep / 4 - y_base) / np.array([len(b) for b in bases], float)
        entry["exact_repeat_gap_meV_per_atom"] = gap.tolist()
        entry["exact_repeat_gap_mean_abs_meV_per_atom"] = float(np.mean(np.abs(gap)))
    return entry, secs


def transfer_study(ednn, bases, y_base, oracle, sizes, counts, seed, data_dir, stem, render_kw, grid,
                   sym_stride=0, sym_mirrors=False, progress=True, on_size=None):
    """Per size ``k``: the first ``counts[i]`` cells of ``bases`` (labels ``y_base``, eV) rebuilt
    unrattled, repeated ``k x k`` and re-rattled (``rattled_supercell``, seed ``seed * 100003 + i``;
    ``k = 1``: the cells themselves), labelled by ``oracle`` (``label_timed``, resumable in
    ``<data_dir>/hexagonal_transfer_*_from_<stem>.json``), rendered on ``k * grid`` pixels and
    predicted by ``ednn`` (also symmetrised with ``sym_stride``); ``k = 2`` also labels the exact
    repeats (the oracle's own extensivity gap). ``on_size(entry)`` runs after each size. Returns
    ``(entry, points)``: errors per mean atom count and the oracle's atoms and seconds."""
    tr = {"sizes": {}}
    pts = {"errors": {}, "oracle_atoms": [], "oracle_seconds": []}
    for k, count in zip(sizes, counts):
        entry, secs = _transfer_size(ednn, bases[:count], np.asarray(y_base[:count]), oracle, k, seed,
                                     (data_dir, stem), render_kw, grid, (sym_stride, sym_mirrors), progress)
        if k == 2:
            tr["oracle_extensivity_gap_meV_per_atom"] = entry["exact_repeat_gap_mean_abs_meV_per_atom"]
        tr["sizes"][str(k)] = entry
        natoms = np.asarray(entry["n_atoms"])
        pts["errors"][int(natoms.mean())] = entry["error_meV_per_atom"]
        pts["oracle_atoms"] += natoms.tolist()
        pts["oracle_seconds"] += secs.tolist()
        print(f"transfer {k}x{k} ({int(natoms.mean())} atoms, n={count}): MAE "
              f"{entry['meV_per_atom']['mean_abs_error']:.2f} meV/atom, "
              f"{entry['meV_per_A2']['mean_abs_error']:.3f} meV/A^2"
              + (f" (symmetrised {entry['symmetrised']['meV_per_atom']['mean_abs_error']:.2f} meV/atom)"
                 if "symmetrised" in entry else "") + f"; oracle {np.median(secs):.2f} s/structure")
        if on_size is not None:
            on_size(tr)
    return tr, pts


def timing_study(ednn, base, grid, focus, sizes, render_kw, tr, pts):
    """EDNN inference seconds vs size on exact ``k x k`` repeats of ``base`` (and the check prediction =
    ``k^2`` x the cell's) in ``tr["ednn_timing"]``, with the log-log time exponents of the EDNN and
    of the oracle (``pts`` from :func:`transfer_study`)."""
    from ..atoms import render, structures
    from ..timing import min_seconds

    p1 = float(ednn.predict_total(render.render(base, shape=(grid, grid), **render_kw)[None], batch_size=1)[0])
    timing = tr["ednn_timing"] = {"k": [], "n_atoms": [], "grid": [], "tiles": [], "inference_seconds": [],
                                  "render_seconds": [], "repeat_rel_deviation": []}
    for k in sizes:
        big = structures.supercell(base, k)
        t0 = time.perf_counter()
        xk = render.render(big, shape=(k * grid, k * grid), **render_kw)[None]
        t_render = time.perf_counter() - t0
        pk = float(ednn.predict_total(xk, batch_size=1)[0])        # also the warm-up
        t_inf = min_seconds(lambda: ednn.predict_total(xk, batch_size=1), repeats=3 if k <= 8 else 1)
        for key, v in (("k", k), ("n_atoms", len(big)), ("grid", k * grid), ("tiles", (k * grid // focus) ** 2),
                       ("inference_seconds", t_inf), ("render_seconds", t_render),
                       ("repeat_rel_deviation", abs(pk - k * k * p1) / abs(k * k * p1))):
            timing[key].append(v)
        print(f"EDNN {k}x{k}: {len(big)} atoms, {k * grid}^2 px, {t_inf:.3f} s "
              f"(render {t_render:.3f} s); pred/k^2 - pred(cell) = {pk / k ** 2 - p1:+.2e} eV")
    tr["ednn_time_exponent"] = fit_exponent(timing["n_atoms"], timing["inference_seconds"])
    # small inputs are dominated by fixed per-call overhead: the slope of the three largest sizes
    tr["ednn_time_exponent_largest3"] = fit_exponent(timing["n_atoms"][-3:], timing["inference_seconds"][-3:])
    tr["ednn_seconds_per_tile_largest"] = timing["inference_seconds"][-1] / timing["tiles"][-1]
    tr["oracle_time_exponent"] = fit_exponent(pts["oracle_atoms"], pts["oracle_seconds"])
    atoms, secs = np.asarray(pts["oracle_atoms"]).astype(int), np.asarray(pts["oracle_seconds"], float)
    tr["oracle_seconds_median_by_atoms"] = {str(a): float(np.median(secs[atoms == a])) for a in np.unique(atoms)}
    return timing


def blur_study(ednn, x, y, areas, clean, sigma_A, pixel_A, widths, n=None):
    """Test MAE (meV/A^2) of ``ednn`` on the first ``n`` images ``x`` with a Gaussian blur (``sigma_A``;
    ``pixel_A`` A per pixel and axis) on an edge band of every tile's context (``widths`` px) or an
    equal-area centre square of its focus; ``clean``: unblurred predictions (eV). Blurring the focus
    changes ``sum(x^2)``, ``sum(x^3)`` and so the fixed moment term's estimate of the composition,
    which measures the image, not the network: the blur acts on ``targets.learned_part(ednn)`` only,
    the rest keeps its unblurred value (the full model's errors are kept too)."""
    from ..atoms.targets import learned_part
    from . import blur

    n = len(x) if n is None else min(n, len(x))
    x, y, areas, clean = x[:n], y[:n], areas[:n], clean[:n]
    sigma_px = sigma_A / np.asarray(pixel_A, float)
    learned = learned_part(ednn)
    x_blurred = blur.gaussian_blur(x, sigma_px)
    t, f = ednn.tile_size, ednn.focus
    split = learned is not ednn
    fixed = clean - learned.predict_total(x, batch_size=32) if split else 0.0

    def mae(p):
        return float(np.mean(np.abs(p - y) * 1e3 / areas))

    bl = {"sigma_A": sigma_A, "sigma_px": sigma_px.tolist(), "n_images": n, "tile_px": t, "focus_px": f,
          "no_blur_mae_meV_per_A2": mae(clean), "widths_px": [], "area_px": [], "area_fraction_of_tile": [],
          "fixed_term_on_unblurred_image": split, "edge_mae_meV_per_A2": [], "centre_mae_meV_per_A2": [],
          "edge_shift_meV_per_A2": [], "centre_shift_meV_per_A2": []}
    if split:
        bl.update(full_model_edge_mae_meV_per_A2=[], full_model_centre_mae_meV_per_A2=[])
    for w in widths:
        area = blur.band_area(t, w)
        for key, v in (("widths_px", w), ("area_px", area), ("area_fraction_of_tile", area / t ** 2)):
            bl[key].append(v)
        for kind, mask in (("edge", blur.edge_mask(t, area)), ("centre", blur.centre_mask(t, area))):
            p = fixed + blur.predict_with_blur(learned, x, mask, x_blurred=x_blurred, batch_size=32)
            bl[f"{kind}_mae_meV_per_A2"].append(mae(p))
            bl[f"{kind}_shift_meV_per_A2"].append(float(np.mean(np.abs(p - clean) * 1e3 / areas)))
            if split:
                q = blur.predict_with_blur(ednn, x, mask, x_blurred=x_blurred, batch_size=32)
                bl[f"full_model_{kind}_mae_meV_per_A2"].append(mae(q))
        print(f"blur {area:5d} px ({area / t ** 2:5.1%} of tile): MAE edge {bl['edge_mae_meV_per_A2'][-1]:.3f}, "
              f"centre {bl['centre_mae_meV_per_A2'][-1]:.3f} meV/A^2")
    return bl


def time_evaluations(pot, le, atoms0, oracle, repeats, rng, other_oracles=True):
    """Median seconds per energy evaluation (``experiments/graphene_mc.py``): EDNN full (ASE calculator; numpy render + model), EDNN
    local (one single-atom dE), oracle (one energy of the cell, as ``oracle.energy``)."""
    from ednn_tf.apply.calculator import EDNNCalculator

    calc = EDNNCalculator(pot)
    cells = []
    for _ in range(repeats + 1):
        a = atoms0.copy()
        a.positions[:, :2] += rng.normal(0, 0.05, (len(a), 2))
        cells.append(a)
    calc.get_potential_energy(cells[-1])            # trace once

    from ednn_tf.timing import median_seconds as per_call   # median: robust to load spikes

    out = {"ednn_full_calculator_s": per_call(calc.get_potential_energy, cells[:repeats])}
    calc.get_forces(cells[-1])
    out["ednn_energy_and_forces_s"] = per_call(calc.get_forces, cells[:repeats])
    out["ednn_full_numpy_render_s"] = per_call(lambda _: le.full_energy(), range(repeats))
    moves = [(int(i), le.positions[i] + np.r_[rng.uniform(-0.05, 0.05, 2), 0.0])
             for i in rng.integers(len(atoms0), size=10 * repeats)]
    le.delta_energy(*moves[0])
    out["ednn_local_dE_s"] = per_call(lambda m: le.delta_energy(*m), moves)
    le.reject()
    oracle.energy(cells[-1])
    out["oracle_energy_s"] = per_call(oracle.energy, cells[:repeats])
    out["oracle"] = oracle.name
    if other_oracles:          # the other installed reference codes on the same cells, for scale
        from ednn_tf.labels import oracles

        out["other_oracles_energy_s"] = {}
        for name, ok in oracles.available_oracles().items():
            if ok and name not in (oracle.name, "lj") and "/" not in name:
                other = oracles.get_oracle(name)
                try:
                    other.energy(cells[-1])
                    out["other_oracles_energy_s"][name] = per_call(other.energy, cells[:min(repeats, 3)])
                except Exception as exc:  # a broken optional code must not sink the run
                    out["other_oracles_energy_s"][name] = f"failed: {type(exc).__name__}: {exc}"
    out["oracle_over_ednn_full"] = out["oracle_energy_s"] / out["ednn_full_calculator_s"]
    out["full_over_local"] = out["ednn_full_calculator_s"] / out["ednn_local_dE_s"]
    return out
