"""bfloat16 against float32 for a space potential, one thread, the same run (issue "run it big",
item 3): speed of energy and of energy + forces, and the error of bfloat16 against float32 and
against the labels, on the validation cells of the shipped ``hexagonal-gfn1``.

    python bench/precision.py                     # 150 validation cells, ~1 min on AVX2, more without BF16
    python bench/precision.py --out docs/measurements/bf16_hexagonal-gfn1_val_<date>.json

The data: ``data/potentials/hexagonal_varied_c012_gfn1_sc2.extxyz`` (README: rebuilt from the
labelling checkpoints), split as in training (``data.split_indices(n, (0.9, 0.1), seed=0)``).
bfloat16 runs the density network under Keras' ``mixed_bfloat16`` (``atoms.space_tf.bf16_subnet``);
rendering, readout and sums stay float32 / float64. Whether it is faster depends on the CPU:
oneDNN needs AVX512-BF16 or AMX for bfloat16 convolutions (``/proc/cpuinfo`` is printed).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def cpu_flags():
    """(model name, the BF16-relevant flags) of this CPU."""
    model, flags = "", []
    with open("/proc/cpuinfo") as fh:
        for ln in fh:
            if ln.startswith("model name") and not model:
                model = ln.split(":", 1)[1].strip()
            if ln.startswith("flags"):
                flags = [f for f in ln.split(":", 1)[1].split() if "bf16" in f or f.startswith(("avx512f", "amx"))]
                break
    return model, flags


def paper_cnn_sheet(cells=1, repeats=2):
    """The paper CNN (f = 64, c = 32, 13 conv + 2 dense, untrained, seed 0: the 1 um^2 run's model) on
    ``cells x cells`` porous training cells at the run's pixel size (384 px a cell: 6 x 6 tiles),
    float32 against bfloat16: seconds (best of ``repeats``) and the relative energy difference."""
    import keras
    import numpy as np

    from ednn_tf import EDNN, networks
    from ednn_tf.atoms.sheets import PorousSheet
    from ednn_tf.atoms.space_tf import bf16_subnet

    keras.utils.set_random_seed(0)
    net = networks.paper_cnn(128, width=1.0, seed=0)
    models = {"float32": EDNN(net, focus=64, context=32), "bfloat16": EDNN(bf16_subnet(net), focus=64, context=32)}
    sheet = PorousSheet((14 * cells, 8 * cells), seed=0)
    n = 384 * cells
    img = sheet.row_source((n, n))(0, n)[None].astype("float32")
    out = {}
    for name, m in models.items():
        m.predict_total(img)
        best = min(timed(lambda: m.predict_total(img))[1] for _ in range(repeats))
        out[name] = {"energy": float(np.asarray(m.predict_total(img)).ravel()[0]), "seconds": best}
    out["relative_energy_difference"] = abs(out["bfloat16"]["energy"] / out["float32"]["energy"] - 1.0)
    out["speedup_bf16"] = out["float32"]["seconds"] / out["bfloat16"]["seconds"]
    out["tiles"] = (n // 64) ** 2
    return out


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="hexagonal-gfn1")
    ap.add_argument("--data", default=os.path.join(REPO, "data/potentials/hexagonal_varied_c012_gfn1_sc2.extxyz"))
    ap.add_argument("--out", default=os.path.join(REPO, "results", "bench_precision.json"))
    args = ap.parse_args(argv)
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from ase.io import read

    from ednn_tf import data, load_potential
    from ednn_tf.apply.space import predict_structures
    from ednn_tf.util import write_json_atomic

    pot = load_potential(args.model)
    cells = read(args.data, ":")
    val = [cells[i] for i in data.split_indices(len(cells), (0.9, 0.1), seed=0)[1]]
    n = np.array([len(a) for a in val])
    res, sec = {}, {}
    for prec in ("float32", "bfloat16"):
        predict_structures(pot, val[:2], precision=prec)                         # trace
        predict_structures(pot, val[:2], precision=prec, derivatives=False)
        res[prec], sec[prec + " E+F"] = timed(lambda: predict_structures(pot, val, precision=prec))
        _, sec[prec + " E"] = timed(lambda: predict_structures(pot, val, precision=prec, derivatives=False))
    f32, b16 = res["float32"], res["bfloat16"]
    dE = np.array([b["energy"] - a["energy"] for a, b in zip(f32, b16)]) / n * 1e3
    dF = np.concatenate([np.abs(b["forces"] - a["forces"])[:, :2].ravel() for a, b in zip(f32, b16)])

    def label_errors(rows):
        e = np.array([r["energy"] - s.get_potential_energy() for r, s in zip(rows, val)]) / n * 1e3
        f = np.concatenate([np.abs(r["forces"] - s.get_forces())[:, :2].ravel() for r, s in zip(rows, val)])
        return {"energy_mae_meV_per_atom": float(np.abs(e).mean()), "force_mae_xy_eV_per_A": float(f.mean())}

    model, flags = cpu_flags()
    out = {"n": len(val), "cpu": model, "cpu_bf16_flags": flags, "threads": 1,
           "bf16_vs_f32": {"energy_mae_meV_per_atom": float(np.abs(dE).mean()),
                           "energy_max_meV_per_atom": float(np.abs(dE).max()),
                           "force_mae_eV_per_A": float(dF.mean()), "force_max_eV_per_A": float(dF.max())},
           "vs_labels": {"float32": label_errors(f32), "bfloat16": label_errors(b16)},
           "seconds": sec, "speedup_bf16": {"E": sec["float32 E"] / sec["bfloat16 E"],
                                            "E+F": sec["float32 E+F"] / sec["bfloat16 E+F"]},
           "paper_cnn_sheet": paper_cnn_sheet(),
           "command": "python bench/precision.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(out, indent=1))
    write_json_atomic(out, args.out)
    return out


if __name__ == "__main__":
    main()
