"""Energy + force training (issue 14): the batched renderer equals the per-structure one, the
trainer's forces are the calculator's, force labels teach the forces, resume is exact, the
Horovod step matches the plain one, the CLI trains on forces, and NVE conserves energy to O(dt^2)."""
import json
import os
import textwrap

import ase.io
import keras
import numpy as np
import pytest

from conftest import requires_horovod, requires_oracle
from ednn_tf import cli, networks, training
from ednn_tf.apply.calculator import EDNNCalculator
from ednn_tf.apply.fit import evaluate, labelled_energies, labelled_forces, train_potential
from ednn_tf.apply.force_training import ForceTrainer, StructureBatches, predict_energies_forces
from ednn_tf.apply.nve import drift_summary, nve_run
from ednn_tf.atoms.render_tf import render_batch_tf, render_tf
from ednn_tf.atoms.structures import honeycomb_sheet, varied_hexagonal_cell
from ednn_tf.model import DensityEDNN
from ednn_tf.potential import Potential

KINDS, REPEATS = ("graphene", "hbn", "bnc-random"), ((3, 2), (4, 2))


def _potential(seed, context=2, filters=6, pixel_size=0.45, gamma=0.45, scale=0.05):
    sub = networks.energy_density(context, channels=3, filters=filters, seed=seed)
    pot = Potential(DensityEDNN(sub, context), pixel_size, gamma, None, [5, 6, 7],
                    {5: -1.0, 6: -1.5, 7: -2.0}, scale)
    pot.ednn(np.zeros((1, 8, 8, 3), np.float32))
    return pot


@pytest.fixture(scope="module")
def teacher_data():
    """24- and 32-atom cells labelled by a random 'teacher' potential: learnable exactly."""
    teacher = _potential(seed=11, scale=1.0)
    cells = [varied_hexagonal_cell(s, kinds=KINDS, repeats=REPEATS) for s in range(24)]
    energies, forces = predict_energies_forces(teacher, cells)
    return cells, energies, forces


def test_batched_render_equals_render_tf_and_padding_adds_nothing():
    import tensorflow as tf

    a, b = (varied_hexagonal_cell(s, kinds=KINDS, repeats=((3, 2),)) for s in (3, 4))
    pot = _potential(0)
    shape = (17, 19)
    n = max(len(a), len(b)) + 3                       # three padding atoms in every row
    pos, w, lengths = np.zeros((2, n, 2), np.float32), np.zeros((2, n, 3), np.float32), np.zeros((2, 2), np.float32)
    for i, s in enumerate((a, b)):
        pos[i, :len(s)], lengths[i] = s.positions[:, :2], s.cell.lengths()[:2]
        w[i, :len(s)] = (s.numbers[:, None] == np.array([5, 6, 7])).astype(np.float32)
    pos[:, -3:] = 1.234                                 # padding atoms anywhere
    assert not np.allclose(lengths[0], lengths[1])      # one grid, two cells of different lengths
    p = tf.constant(pos)
    with tf.GradientTape() as tape:
        tape.watch(p)
        img = render_batch_tf(p, w, lengths, shape, pot.gamma)
        total = tf.reduce_sum(img ** 2)
    grad = tape.gradient(total, p).numpy()
    for i, s in enumerate((a, b)):
        ref = render_tf(s.positions, s.numbers, s.cell, shape=shape, gamma=pot.gamma, channels=[5, 6, 7]).numpy()
        np.testing.assert_allclose(img[i].numpy(), ref, atol=2e-5 * np.abs(ref).max())
    assert np.all(grad[:, -3:] == 0) and np.abs(grad[:, :len(a)]).max() > 0


def test_trainer_forces_are_the_calculators(teacher_data):
    cells, energies, forces = teacher_data
    teacher = _potential(seed=11, scale=1.0)
    calc = EDNNCalculator(teacher)
    for i in (0, 5, 17):
        a = cells[i].copy()
        a.calc = calc
        assert a.get_potential_energy() == pytest.approx(energies[i], rel=1e-6)
        f = a.get_forces()
        np.testing.assert_allclose(f, forces[i], atol=1e-4 * np.abs(f).max())
        assert np.all(forces[i][:, 2] == 0)             # a 2D model: no z force


def test_force_labels_teach_the_forces(teacher_data, tmp_path):
    """Same data, epochs and seed: training on forces brings the validation force error well below
    energy-only training, and the energy error no higher. (No augmentation: the random teacher is
    not mirror-symmetric, so a mirrored structure's labels are not the mirrored labels.)"""
    cells, energies, forces = teacher_data
    kw = dict(pixel_size=0.45, gamma=0.45, context=2, filters=6, epochs=20, batch_size=4, lr=1e-2, val_fraction=0.25,
              progress=False, augment=False)
    _, m_e = train_potential(cells, energies, tmp_path / "e.keras", **kw)
    _, m_f = train_potential(cells, energies, tmp_path / "f.keras", forces=forces, force_weight=10.0, **kw)
    val = m_e["val_indices"]
    assert m_f["val_indices"] == val and m_f["training"]["forces"] and not m_e["training"]["forces"]
    pot_e = keras.models.load_model(tmp_path / "e.keras")
    _, f_e = predict_energies_forces(pot_e, [cells[i] for i in val])
    mae_e = np.mean(np.abs(np.concatenate([f_e[k] - forces[i] for k, i in enumerate(val)])[:, :2]))
    mae_f = m_f["val"]["force_mae_xy_eV_per_A"]
    label = np.mean(np.abs(np.concatenate([forces[i] for i in val])[:, :2]))
    assert mae_f < 0.75 * mae_e and mae_f < 0.75 * label, (mae_f, mae_e, label)   # measured 0.65, 0.66
    assert m_f["val"]["energy_mae_meV_per_atom"] < 1.5 * m_e["val"]["energy_mae_meV_per_atom"]


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def _trainer(cells, energies, forces, weight_seed=5):
    pot = _potential(seed=weight_seed)
    batches = StructureBatches(pot, cells, energies, forces, batch_size=4, seed=0, augment=True)
    trainer = ForceTrainer(pot, 1.0, 1.0, energy_unit=0.05, force_unit=0.5)
    trainer.compile(optimizer=keras.optimizers.Adam(training.cosine_schedule(3e-3, 3 * len(batches))))
    return trainer, batches


def test_interrupted_force_training_resumes_to_the_same_weights(teacher_data, tmp_path):
    cells, energies, forces = teacher_data
    ref, batches = _trainer(cells, energies, forces)
    training.fit(ref, batches.dataset(), epochs=3, workdir=tmp_path / "a", progress=False)
    run, batches = _trainer(cells, energies, forces)
    with pytest.raises(KeyboardInterrupt):
        training.fit(run, batches.dataset(), epochs=3, workdir=tmp_path / "b", progress=False,
                     callbacks=[_StopAfter(1)])
    run, batches = _trainer(cells, energies, forces, weight_seed=99)   # a fresh process would start from other weights
    training.fit(run, batches.dataset(), epochs=3, workdir=tmp_path / "b", progress=False)
    for w_ref, w in zip(ref.get_weights(), run.get_weights()):
        np.testing.assert_array_equal(w_ref, w)


def test_distributed_train_step_matches_the_plain_one_in_one_process(teacher_data, tmp_path):
    from ednn_tf import distributed

    cells, energies, forces = teacher_data
    ref, batches = _trainer(cells[:8], energies[:8], forces[:8])
    training.fit(ref, batches.dataset(), epochs=1, workdir=tmp_path / "a", progress=False)
    run, batches = _trainer(cells[:8], energies[:8], forces[:8])
    with pytest.raises(ValueError, match="defines its own train_step"):
        distributed.make_distributed(run)
    distributed.make_distributed(run, replace_train_step=False)
    training.fit(run, batches.dataset(), epochs=1, workdir=tmp_path / "b", progress=False)
    for w_ref, w in zip(ref.get_weights(), run.get_weights()):
        np.testing.assert_array_equal(w_ref, w)


def test_cli_trains_on_forces_and_eval_matches_the_api(teacher_data, tmp_path, capsys):
    cells, energies, forces = teacher_data
    lab = tmp_path / "lab.extxyz"
    cli.write_labelled(lab, cells[:10], energies[:10], forces[:10])
    model = tmp_path / "m.keras"
    assert cli.main(["train", str(lab), "--forces-key", "forces", "--force-weight", "3", "--out", str(model),
                     "--epochs", "1", "--context", "2", "--filters", "4", "--pixel-size", "0.45", "--gamma", "0.45",
                     "--val-fraction", "0.3", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "m.metrics.json").read_text())
    assert metrics["training"]["force_weight"] == 3.0 and "force_mae_xy_eV_per_A" in metrics["val"]
    capsys.readouterr()
    assert cli.main(["eval", str(model), str(lab), "--forces-key", "forces", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    structures = ase.io.read(lab, ":")
    api = evaluate(keras.models.load_model(model), structures, labelled_energies(structures),
                   labelled_forces(structures))
    for key in ("energy_mae_meV_per_atom", "force_mae_eV_per_A", "force_rmse_xy_eV_per_A"):
        assert got[key] == pytest.approx(api[key], rel=1e-9)
    assert cli.main(["train", str(lab), "--forces-key", "F_dft", "--out", str(tmp_path / "x.keras")]) == 2
    assert "structure 0 has no forces key 'F_dft'" in capsys.readouterr().err
    assert cli.main(["train", str(lab), "--forces-key", "forces", "--force-weight", "-1", "--epochs", "1",
                     "--out", str(tmp_path / "x.keras"), "--no-progress"]) == 2
    assert "force_weight" in capsys.readouterr().err


def test_drift_summary_of_a_known_line():
    t = np.arange(0, 1001, 1.0)
    run = {"time_fs": t, "etot": -100.0 + 0.002 * t / 1000 * 10, "ekin": np.full(t.size, 1.0), "n_atoms": 10,
           "net_force": np.zeros(t.size), "com_velocity": np.zeros((t.size, 3)), "temperature_K": 300.0,
           "timestep_fs": 1.0, "seconds_per_step": 0.0, "total_mass": 120.0}
    s = drift_summary(run)
    assert s["drift_meV_per_atom_per_ps"] == pytest.approx(2.0, rel=1e-9)     # 2 meV/atom over 1 ps
    assert s["etot_rms_meV_per_atom"] < 1e-9 and s["duration_ps"] == 1.0


@pytest.mark.parametrize("which", ["ednn", pytest.param("tersoff", marks=requires_oracle("tersoff-bnc"))])
def test_nve_energy_error_is_second_order_in_the_timestep(which):
    """Velocity Verlet's energy error scales as dt^2 when the forces are the exact gradient of the
    energy: halving dt divides the largest |E_tot - E_tot(0)| by about 4 (the EDNN's autodiff forces
    pass exactly as the classical potential does; wrong forces would give a first-order drift)."""
    sheet = honeycomb_sheet(3, 2)
    if which == "ednn":
        make = lambda: EDNNCalculator(_potential(seed=3))   # noqa: E731
    else:
        from ednn_tf.labels.oracles import get_oracle

        make = get_oracle("tersoff-bnc").calculator
    dev = []
    for dt, steps in ((1.0, 40), (0.5, 80)):
        run = nve_run(sheet, make(), 600.0, n_steps=steps, timestep_fs=dt, seed=1)
        dev.append(drift_summary(run)["etot_max_dev_meV_per_atom"])
    assert dev[1] > 0 and 2.5 < dev[0] / dev[1] < 6.0, dev


FORCE_WORKER = textwrap.dedent('''
    import json, os, sys
    import numpy as np, keras
    sys.path.insert(0, sys.argv[2])
    from ednn_tf import distributed as dist
    from ednn_tf.apply.force_training import ForceTrainer, StructureBatches, predict_energies_forces
    from ednn_tf.atoms.structures import varied_hexagonal_cell
    from test_force_training import KINDS, REPEATS, _potential

    out = sys.argv[1]
    dist.init()
    r, n = dist.rank(), dist.size()
    cells = [varied_hexagonal_cell(s, kinds=KINDS, repeats=REPEATS) for s in range(16)]
    energies, forces = predict_energies_forces(_potential(seed=11, scale=1.0), cells)
    pot = _potential(seed=5 + r)                       # ranks start from different weights
    batches = StructureBatches(pot, cells, energies, forces, batch_size=2, shard=(r, n))
    trainer = ForceTrainer(pot, 1.0, 1.0, energy_unit=0.05, force_unit=0.3)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    dist.make_distributed(trainer, replace_train_step=False)
    hist = trainer.fit(batches.dataset(), epochs=2, verbose=0, callbacks=[dist.BroadcastInitialState()])
    np.savez(os.path.join(out, f"w{r}.npz"), *trainer.get_weights())
    with open(os.path.join(out, f"log{r}.json"), "w") as fh:
        json.dump({"steps": len(batches), "history": hist.history}, fh)
''')


@requires_horovod
def test_two_horovod_ranks_train_on_forces_in_step(tmp_path):
    """Horovod: two ranks with different initial weights and different batches end with identical
    weights (broadcast start, gradients averaged inside ForceTrainer.train_step)."""
    from test_distributed import _horovodrun

    script = tmp_path / "worker.py"
    script.write_text(FORCE_WORKER)
    res = _horovodrun(2, script, tmp_path, os.path.dirname(os.path.abspath(__file__)), timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(w0.files) == 6
    for k in w0.files:
        np.testing.assert_array_equal(w0[k], w1[k])
    logs = [json.loads((tmp_path / f"log{r}.json").read_text()) for r in (0, 1)]
    assert logs[0]["steps"] == logs[1]["steps"] > 0
    assert logs[0]["history"] == logs[1]["history"]          # epoch metrics averaged over ranks
    assert all(np.isfinite(v) for v in logs[0]["history"]["loss"])


def _trainer_loss(trainer, x, y):
    return float(trainer._loss(x, y, training=False)[0])


def _same_grid_pair(pot, cells):
    """Two cells on one grid with different atom counts (vacancies), or fail."""
    by_grid = {}
    for i, a in enumerate(cells):
        by_grid.setdefault(tuple(pot.grid(a.cell.lengths()[:2])[0]), []).append(i)
    for idx in by_grid.values():
        for i in idx:
            for j in idx:
                if len(cells[i]) < len(cells[j]):
                    return i, j
    raise AssertionError("no two cells of one grid with different atom counts")


def test_a_mixed_size_batch_gives_the_loss_of_its_structures_one_at_a_time(teacher_data):
    """Padded atoms add nothing: the energy term is the mean of the structures' own terms and the
    force term their atom-weighted mean (every force component counts once); the smaller structure
    gets padding rows in the batch."""
    cells, energies, forces = teacher_data
    pot = _potential(seed=3)
    i, j = _same_grid_pair(pot, cells)
    pair, e2, f2 = [cells[i], cells[j]], [energies[i], energies[j]], [forces[i], forces[j]]
    assert len(pair[0]) < len(pair[1])
    both = StructureBatches(pot, pair, e2, f2, batch_size=2, shuffle=False)
    assert len(both) == 1 and both[0][0]["mask"].sum() == len(pair[0]) + len(pair[1])
    assert both[0][0]["positions"].shape[1] == len(pair[1]) > len(pair[0])      # padding rows in row 0
    singles = [StructureBatches(pot, [a], [e], [f], batch_size=1, shuffle=False)[0] for a, e, f in zip(pair, e2, f2)]
    n = np.array([len(a) for a in pair], float)
    for w_e, w_f in ((1.0, 0.0), (0.0, 1.0), (1.0, 10.0)):
        tr = ForceTrainer(pot, w_e, w_f, energy_unit=0.05, force_unit=0.5)
        one = np.array([_trainer_loss(tr, *b) for b in singles])
        want = (w_e * np.mean([_trainer_loss(ForceTrainer(pot, 1.0, 0.0, 0.05, 0.5), *b) for b in singles])
                + w_f * np.sum(n * [_trainer_loss(ForceTrainer(pot, 0.0, 1.0, 0.05, 0.5), *b) for b in singles]) / n.sum())
        got = _trainer_loss(tr, *both[0])
        assert got == pytest.approx(want, rel=1e-5) and got > 0
        if not w_e:
            assert got == pytest.approx(np.sum(n * one) / n.sum(), rel=1e-5)


def test_gradient_of_the_force_loss_equals_finite_differences(teacher_data):
    """The second-order gradient d(loss)/d(weights) of the force term, on a tiny network, against
    central differences of the loss in the weights (float32 network: h = 1e-3 relative)."""
    import tensorflow as tf

    cells, energies, forces = teacher_data
    pot = _potential(seed=7, filters=3)
    x, y = StructureBatches(pot, cells[:2], energies[:2], forces[:2], batch_size=2, shuffle=False)[0]
    tr = ForceTrainer(pot, 0.0, 1.0, energy_unit=0.05, force_unit=0.5)
    with tf.GradientTape() as tape:
        loss = tr._loss(x, y, training=False)[0]
    weights = pot.trainable_weights
    grads = tape.gradient(loss, weights)
    rng = np.random.default_rng(0)
    checked = []
    for w, g in zip(weights, grads):
        if g is None or len(w.shape) < 2:
            continue
        g = g.numpy()
        flat = int(np.argmax(np.abs(g)))                  # the strongest entry and one at random
        for k in (flat, int(rng.integers(g.size))):
            idx = np.unravel_index(k, g.shape)
            old = w.numpy()
            h = 1e-3 * max(1.0, abs(float(old[idx])))
            vals = []
            for s in (1, -1):
                new = old.copy()
                new[idx] += s * h
                w.assign(new)
                vals.append(_trainer_loss(tr, x, y))
            w.assign(old)
            checked.append((float(g[idx]), (vals[0] - vals[1]) / (2 * h)))
    ad, fd = np.array(checked).T
    assert len(ad) >= 4 and np.abs(ad).max() > 1e-2
    np.testing.assert_allclose(ad, fd, rtol=2e-2, atol=2e-3 * np.abs(ad).max())


def test_forces_of_a_force_trained_model_are_minus_the_energy_gradient(teacher_data, tmp_path):
    """After force training (saved and reloaded), the calculator's forces are -dE/dr of its own
    energy, by central differences (float32 network: h = 2e-3 A)."""
    cells, energies, forces = teacher_data
    train_potential(cells, energies, tmp_path / "f.keras", forces=forces, force_weight=10.0, pixel_size=0.45,
                    gamma=0.45, context=2, filters=6, epochs=2, batch_size=4, lr=1e-2, val_fraction=0.25,
                    progress=False, augment=False)
    calc = EDNNCalculator(os.fspath(tmp_path / "f.keras"))
    a = cells[3].copy()
    f = calc.get_forces(a)
    h, ad, fd = 2e-3, [], []
    for i in (0, 7, 15):
        for axis in (0, 1):
            e = []
            for s in (1, -1):
                b = a.copy()
                b.positions[i, axis] += s * h
                e.append(calc.get_potential_energy(b))
            ad.append(f[i, axis])
            fd.append(-(e[0] - e[1]) / (2 * h))
    ad, fd = np.array(ad), np.array(fd)
    assert np.linalg.norm(ad) > 1e-2
    assert np.linalg.norm(ad - fd) <= 2e-2 * np.linalg.norm(ad), (ad, fd)


def test_a_fine_tune_starts_at_its_init_models_energies(teacher_data, tmp_path):
    """``init_from`` an atoms potential keeps its e0 and scale (a step size of 1e-9 leaves the energies
    of the fine-tune those of the init model); ``refit_reference`` fits them to the new split instead."""
    cells, energies, forces = teacher_data
    kw = dict(forces=forces[12:], pixel_size=0.45, gamma=0.45, context=2, filters=6, epochs=1, batch_size=4,
              val_fraction=0.25, progress=False, augment=False)
    base, _ = train_potential(cells[:12], energies[:12], tmp_path / "base.keras", **{**kw, "forces": forces[:12]},
                              lr=1e-2)
    tuned, _ = train_potential(cells[12:], energies[12:], tmp_path / "ft.keras", lr=1e-9, init_from=base, **kw)
    refit, _ = train_potential(cells[12:], energies[12:], tmp_path / "rf.keras", lr=1e-9, init_from=base,
                               refit_reference=True, **kw)
    assert tuned.e0 == base.e0 and tuned.scale == base.scale
    e_base, _ = predict_energies_forces(base, cells[12:16])
    e_tuned, _ = predict_energies_forces(tuned, cells[12:16])
    e_refit, _ = predict_energies_forces(refit, cells[12:16])
    np.testing.assert_allclose(e_tuned, e_base, atol=1e-4)
    assert np.max(np.abs(np.asarray(e_refit) - e_base)) > 1e-2, (e_refit, e_base)
