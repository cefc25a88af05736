"""EDNN throughput: tiles/s for the paper CNN on 128x128 tiles (f=64, c=32), inference and training.

Prints, from one run on this machine:
  * matmul GFLOP/s (an n^3 float32 matmul, the machine's reference; n = --matmul-n),
  * the bare sub-network on pre-cut tiles (tiles/s, GFLOP/s, fraction of matmul rate),
  * the full EDNN (tiling + fold + sub-network + float64 sum) on 256x256 images (16 tiles each),
  * the EDNN/bare ratio (the cost of tiling and summation),
  * one Adam training step of the EDNN on a batch of 256x256 images (tiles/s, images/s),
  * the Ising dense net (f=1, c=1) on 128x128 lattices in tiles/s for comparison.

Every figure goes through Keras' compiled functions (``predict_on_batch``, ``train_on_batch``) with
numpy input, as a user's code would, so it runs under any Keras backend: TensorFlow here, JAX on
a GPU node without TensorFlow (``KERAS_BACKEND=jax python bench/tiles.py --batch 64``).

With ``--density`` (or ``--density-only``, which skips the paper-CNN and Ising parts) it also
measures the f = 1 energy-density network of the potentials (``networks.energy_density``, run by
``model.DensityEDNN`` once over the periodically padded image) against tile CNNs of the same
context ``c``, all in pixels/s, GFLOP/s and fraction of matmul, for inference (``predict_on_batch``)
and an Adam training step (``train_on_batch``, MSE on the summed energy, as ``apply.fit`` trains an
energy-only potential):

  * the density net on a ``--density-pixels``-square image (one value per pixel),
  * the tile CNN at f = 1, c (``paper_cnn(2c+1, width=--cnn-width, dense=--cnn-dense)``): the tile
    EDNN that gives one value per pixel, i.e. the same receptive field as the density net,
    on a ``--f1-pixels``-square image (its cost is linear in tiles = pixels),
  * the tile CNN at f = 32, c (the hexagonal preset's shape; one value per 32x32 focus, not per pixel),

and the ratios density / tile CNN (pixels/s) of each.

    python bench/tiles.py [--batch 8] [--repeats 5] [--width 1.0] [--matmul-n 2048]
    python bench/tiles.py --density-only --repeats 3 [--density-pixels 256] [--context 16] [--json out.json]
"""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from any folder or worktree

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ednn_tf import EDNN, networks  # noqa: E402
from ednn_tf.timing import call_seconds  # noqa: E402


def conv_net_flops(model, input_shape=None):
    """Multiply-adds x 2 of every Conv2D / Dense layer for one input (batch 1).

    Without ``input_shape`` the layers' own (built, fixed) output shapes are used. With it (one
    sample's shape, e.g. ``(H, W, C)``) the shapes are propagated from it through the layers in order
    (``compute_output_shape``: strides, ``same`` / ``valid`` padding and dilations), which sizes a fully
    convolutional net such as ``networks.energy_density`` (inputs ``(None, None, C)``); the model must
    then be a chain (each layer feeds the next). Each Conv2D counts ``2 kh kw cin cout`` per output
    position, each Dense ``2 din units`` per input row; biases and activations are not counted.
    """
    import keras
    flops = 0
    shape = None if input_shape is None else (1,) + tuple(int(n) for n in input_shape)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if shape is None:
            in_shape, out_shape = layer.input.shape, layer.output.shape
        else:
            in_shape, out_shape = shape, tuple(layer.compute_output_shape(shape))
            shape = out_shape
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = out_shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * kh * kw * in_shape[-1] * cout
        elif isinstance(layer, keras.layers.Dense):
            rows = int(np.prod(in_shape[1:-1])) if len(in_shape) > 2 else 1
            flops += 2 * rows * in_shape[-1] * layer.units
    return flops


#: ``--cpu-time``: time calls by this process's CPU seconds instead of wall seconds (see ``best_time``).
CPU_TIME = False


def best_time(fn, repeats):
    """``(min, median)`` seconds of ``repeats`` calls after one warm-up (trace) call.

    Wall seconds (``timing.call_seconds``), or with ``CPU_TIME`` (``--cpu-time``) the CPU seconds of
    this process (``time.process_time``, all its threads): on a machine whose cores other jobs hold,
    a ``nice -n 19`` run gets a few % of a core and its wall times measure the scheduler; its CPU
    seconds still measure the work (single-threaded: ``OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1``).
    """
    if not CPU_TIME:
        ts = call_seconds(fn, repeats=repeats, warmup=1)
    else:
        import time
        fn()
        ts = []
        for _ in range(int(repeats)):
            t0 = time.process_time()
            fn()
            ts.append(time.process_time() - t0)
        ts = np.asarray(ts)
    return float(ts.min()), float(np.median(ts))


def device_name():
    """``"CPU"`` or the accelerator the backend computes on (e.g. ``"gpu: NVIDIA H100 80GB HBM3"``)."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax
            d = jax.devices()[0]
            return f"{d.platform}: {getattr(d, 'device_kind', d)}"
        if backend == "tensorflow":
            import tensorflow as tf
            gpus = tf.config.list_physical_devices("GPU")
            return f"gpu: {tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU')}" if gpus else "CPU"
        if backend == "torch":
            import torch
            return f"gpu: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    except Exception as exc:  # a figure without a device name is still a figure
        return f"unknown ({exc})"
    return "CPU"


def density_section(args, rng, matmul_gflops):
    """The energy-density net against the f = 1 and f = 32 tile CNNs of the same context, in pixels/s
    (inference and one Adam training step each), GFLOP/s and fraction of ``matmul_gflops``."""
    from ednn_tf.model import DensityEDNN

    c, ch, n, n1 = args.context, args.channels, args.density_pixels, args.f1_pixels
    if n % 32:
        raise SystemExit(f"--density-pixels must be a multiple of 32 (the f = 32 tile CNN), got {n}")
    b = args.density_batch
    dsub = networks.energy_density(c, channels=ch, filters=args.density_filters, seed=0)
    nets = {
        "density": (DensityEDNN(dsub, c), n, conv_net_flops(dsub, (n + 2 * c, n + 2 * c, ch)) / n ** 2),
        "tile_cnn_f1": (EDNN(networks.paper_cnn(2 * c + 1, ch, width=args.cnn_width, dense=args.cnn_dense, seed=0),
                             1, c), n1, None),
        "tile_cnn_f32": (EDNN(networks.paper_cnn(32 + 2 * c, ch, width=args.cnn_width, dense=args.cnn_dense, seed=0),
                              32, c), n, None),
    }
    out = {"context": c, "channels": ch, "batch": b, "density_filters": args.density_filters,
           "density_dilations": list(networks.density_dilations(c)), "cnn_width": args.cnn_width,
           "cnn_dense": args.cnn_dense, "timing": "min of --repeats calls after one warm-up (median also given)",
           "train_gflops_convention": "3 x forward FLOPs per pixel (forward, input and weight gradients)"}
    for name, (model, side, flops_px) in nets.items():
        if flops_px is None:   # a tile EDNN: FLOPs of one tile over the focus pixels it gives
            flops_px = conv_net_flops(model.subnet) / model.focus ** 2
        x = rng.random((b, side, side, ch)).astype(np.float32)
        y = rng.normal(size=(b, 1)).astype(np.float32)
        px = b * side * side
        t_inf, t_inf_med = best_time(lambda m=model, x=x: m.predict_on_batch(x), args.repeats)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
        t_tr, t_tr_med = best_time(lambda m=model, x=x, y=y: m.train_on_batch(x, y), args.repeats)
        inf_pps, tr_pps = px / t_inf, px / t_tr
        out[name] = {"image": side, "focus": model.focus, "tile": model.tile_size,
                     "params": int(model.subnet.count_params()), "kflop_per_pixel": flops_px / 1e3,
                     "inference_pixels_per_s": inf_pps, "inference_pixels_per_s_median": px / t_inf_med,
                     "inference_gflops": inf_pps * flops_px / 1e9,
                     "inference_fraction_of_matmul": inf_pps * flops_px / 1e9 / matmul_gflops,
                     "train_pixels_per_s": tr_pps, "train_pixels_per_s_median": px / t_tr_med,
                     "train_gflops": 3 * tr_pps * flops_px / 1e9,
                     "train_fraction_of_matmul": 3 * tr_pps * flops_px / 1e9 / matmul_gflops}
    d = out["density"]
    for ref in ("tile_cnn_f1", "tile_cnn_f32"):
        for mode in ("inference", "train"):
            out[f"density_over_{ref}_{mode}"] = d[f"{mode}_pixels_per_s"] / out[ref][f"{mode}_pixels_per_s"]
        out[f"kflop_per_pixel_{ref}_over_density"] = out[ref]["kflop_per_pixel"] / d["kflop_per_pixel"]

    print(f"energy density vs tile CNNs, context c = {c} (window {2 * c + 1} px), {ch} channels, batch {b}:")
    labels = {"density": f"density net ({args.density_filters} filters, dilations "
                         f"{'/'.join(map(str, out['density_dilations']))}), {n}^2 image",
              "tile_cnn_f1": f"tile CNN f=1 (tile {2 * c + 1}, width {args.cnn_width}), {n1}^2 image",
              "tile_cnn_f32": f"tile CNN f=32 (tile {32 + 2 * c}, width {args.cnn_width}), {n}^2 image"}
    for name, label in labels.items():
        r = out[name]
        print(f"  {label}: {r['params']:,} params, {r['kflop_per_pixel']:.1f} kFLOP/pixel")
        print(f"    inference {r['inference_pixels_per_s']:11,.0f} pixels/s {r['inference_gflops']:7.2f} GFLOP/s "
              f"({r['inference_fraction_of_matmul']:.3f} of matmul)")
        print(f"    training  {r['train_pixels_per_s']:11,.0f} pixels/s {r['train_gflops']:7.2f} GFLOP/s "
              f"({r['train_fraction_of_matmul']:.3f} of matmul; 3x forward FLOPs)")
    for ref in ("tile_cnn_f1", "tile_cnn_f32"):
        print(f"  density / {ref} pixels/s: inference {out[f'density_over_{ref}_inference']:.2f}x, "
              f"training {out[f'density_over_{ref}_train']:.2f}x "
              f"(FLOP/pixel {ref} / density = {out[f'kflop_per_pixel_{ref}_over_density']:.2f})")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="256x256 images per call (16 tiles each)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=float, default=1.0, help="CNN filter multiplier (1.0 = paper)")
    ap.add_argument("--matmul-n", type=int, default=2048, help="size of the reference matmul (8192 on a GPU)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by this process's CPU seconds, not wall seconds (a loaded machine; one thread)")
    g = ap.add_argument_group("energy density (--density / --density-only)")
    g.add_argument("--density", action="store_true", help="also run the energy-density comparison")
    g.add_argument("--density-only", action="store_true", help="only matmul and the energy-density comparison")
    g.add_argument("--density-pixels", type=int, default=256, help="image side of the density net and f=32 CNN")
    g.add_argument("--f1-pixels", type=int, default=64, help="image side of the f=1 tile CNN (side^2 tiles)")
    g.add_argument("--density-batch", type=int, default=1, help="images per call in the density comparison")
    g.add_argument("--context", type=int, default=16, help="context c in pixels (window 2c+1)")
    g.add_argument("--channels", type=int, default=3, help="image channels (3: B, C, N of the hexagonal potential)")
    g.add_argument("--density-filters", type=int, default=32, help="width of networks.energy_density (its default)")
    g.add_argument("--cnn-width", type=float, default=0.25, help="filter multiplier of the tile CNNs")
    g.add_argument("--cnn-dense", type=int, default=256, help="hidden dense width of the tile CNNs")
    args = ap.parse_args()
    global CPU_TIME
    CPU_TIME = args.cpu_time

    n = args.matmul_n
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.normal(size=(n, n)).astype(np.float32))
    mm = keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.matmul(a, a)))   # warm-up; sum: 1 number back
    t_mm, _ = best_time(lambda: keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.matmul(a, a))), args.repeats)
    matmul_gflops = 2 * n ** 3 / t_mm / 1e9
    del mm

    res = {"backend": keras.backend.backend(), "device": device_name(), "matmul_n": n, "matmul_gflops": matmul_gflops,
           "clock": "process CPU seconds" if CPU_TIME else "wall seconds"}
    print(f"Keras {keras.__version__} on {res['backend']}, {res['device']}; {os.cpu_count()} CPU threads visible; "
          f"timed in {res['clock']}")
    print(f"matmul {n}^3 float32:           {matmul_gflops:8.1f} GFLOP/s (reference)")
    if not args.density_only:
        f, c = 64, 32
        t = f + 2 * c
        sub = networks.paper_cnn(t, width=args.width, seed=0)
        model = EDNN(sub, focus=f, context=c)
        flops_tile = conv_net_flops(sub)
        x = rng.normal(size=(args.batch, 256, 256, 1)).astype(np.float32)
        tiles = rng.normal(size=(args.batch * 16, t, t, 1)).astype(np.float32)
        t_bare, _ = best_time(lambda: sub.predict_on_batch(tiles), args.repeats)
        t_full, _ = best_time(lambda: model.predict_on_batch(x), args.repeats)
        n_tiles = args.batch * 16
        bare_tps, full_tps = n_tiles / t_bare, n_tiles / t_full
        model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="mse")
        y = rng.normal(size=(args.batch, 1)).astype(np.float32)
        t_train, _ = best_time(lambda: model.train_on_batch(x, y), args.repeats)
        train_tps = n_tiles / t_train

        isub = networks.ising_dense(3, seed=0)
        imodel = EDNN(isub, focus=1, context=1)
        xi = np.sign(rng.normal(size=(4, 128, 128, 1))).astype(np.float32)
        t_ising, _ = best_time(lambda: imodel.predict_on_batch(xi), args.repeats)
        ising_tps = 4 * 128 * 128 / t_ising
        res.update({
            "batch": args.batch,
            "paper_cnn": {"tile": t, "width": args.width, "params": int(sub.count_params()),
                          "gflop_per_tile": flops_tile / 1e9,
                          "bare_tiles_per_s": bare_tps, "ednn_tiles_per_s": full_tps,
                          "bare_gflops": bare_tps * flops_tile / 1e9, "ednn_gflops": full_tps * flops_tile / 1e9,
                          "ednn_over_bare": full_tps / bare_tps,
                          "bare_fraction_of_matmul": bare_tps * flops_tile / 1e9 / matmul_gflops,
                          "ms_per_256px_image": t_full / args.batch * 1e3,
                          "train_tiles_per_s": train_tps, "train_images_per_s": args.batch / t_train,
                          "train_over_inference": full_tps / train_tps},
            "ising_dense": {"tiles_per_s": ising_tps, "gflops": ising_tps * conv_net_flops(isub) / 1e9,
                            "spins_per_s": ising_tps},
        })
        p = res["paper_cnn"]
        print(f"paper CNN tile {t}x{t} (width {args.width}): {p['params']:,} params, "
              f"{p['gflop_per_tile']:.3f} GFLOP/tile")
        print(f"  bare sub-network, pre-cut tiles: {bare_tps:8.1f} tiles/s  {p['bare_gflops']:6.1f} GFLOP/s "
              f"({p['bare_fraction_of_matmul']:.2f} of matmul)")
        print(f"  EDNN on 256x256 images:          {full_tps:8.1f} tiles/s  {p['ednn_gflops']:6.1f} GFLOP/s "
              f"(EDNN/bare = {p['ednn_over_bare']:.3f}; {p['ms_per_256px_image']:.1f} ms per 60-atom image)")
        print(f"  EDNN training step (Adam, MSE):  {train_tps:8.1f} tiles/s  {args.batch / t_train:8.1f} images/s "
              f"(inference/training = {p['train_over_inference']:.2f})")
        print(f"Ising dense net 3x3 tiles, 128x128: {ising_tps:,.0f} tiles/s "
              f"({res['ising_dense']['gflops']:.1f} GFLOP/s)")
    if args.density or args.density_only:
        res["energy_density"] = density_section(args, rng, matmul_gflops)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
