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

    python bench/tiles.py [--batch 8] [--repeats 5] [--width 1.0] [--matmul-n 2048]
"""
import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ednn_tf import EDNN, networks  # noqa: E402
from ednn_tf.timing import call_seconds  # noqa: E402


def conv_net_flops(model):
    """Multiply-adds x 2 of every Conv2D / Dense layer for one input (batch 1)."""
    import keras
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output.shape
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            flops += 2 * h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return flops


def best_time(fn, repeats):
    """``(min, median)`` seconds of ``repeats`` calls after one warm-up (trace) call."""
    ts = call_seconds(fn, repeats=repeats, warmup=1)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="256x256 images per call (16 tiles each)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=float, default=1.0, help="CNN filter multiplier (1.0 = paper)")
    ap.add_argument("--matmul-n", type=int, default=2048, help="size of the reference matmul (8192 on a GPU)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    n = args.matmul_n
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.normal(size=(n, n)).astype(np.float32))
    mm = keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.matmul(a, a)))   # warm-up; sum: 1 number back
    t_mm, _ = best_time(lambda: keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.matmul(a, a))), args.repeats)
    matmul_gflops = 2 * n ** 3 / t_mm / 1e9
    del mm

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

    res = {
        "backend": keras.backend.backend(), "device": device_name(), "batch": args.batch,
        "matmul_n": n, "matmul_gflops": matmul_gflops,
        "paper_cnn": {"tile": t, "width": args.width, "params": int(sub.count_params()), "gflop_per_tile": flops_tile / 1e9,
                      "bare_tiles_per_s": bare_tps, "ednn_tiles_per_s": full_tps,
                      "bare_gflops": bare_tps * flops_tile / 1e9, "ednn_gflops": full_tps * flops_tile / 1e9,
                      "ednn_over_bare": full_tps / bare_tps,
                      "bare_fraction_of_matmul": bare_tps * flops_tile / 1e9 / matmul_gflops,
                      "ms_per_256px_image": t_full / args.batch * 1e3,
                      "train_tiles_per_s": train_tps, "train_images_per_s": args.batch / t_train,
                      "train_over_inference": full_tps / train_tps},
        "ising_dense": {"tiles_per_s": ising_tps, "gflops": ising_tps * conv_net_flops(isub) / 1e9,
                        "spins_per_s": ising_tps},
    }
    print(f"Keras {keras.__version__} on {res['backend']}, {res['device']}; {os.cpu_count()} CPU threads visible")
    print(f"matmul {n}^3 float32:           {matmul_gflops:8.1f} GFLOP/s (reference)")
    p = res["paper_cnn"]
    print(f"paper CNN tile {t}x{t} (width {args.width}): {p['params']:,} params, {p['gflop_per_tile']:.3f} GFLOP/tile")
    print(f"  bare sub-network, pre-cut tiles: {bare_tps:8.1f} tiles/s  {p['bare_gflops']:6.1f} GFLOP/s "
          f"({p['bare_fraction_of_matmul']:.2f} of matmul)")
    print(f"  EDNN on 256x256 images:          {full_tps:8.1f} tiles/s  {p['ednn_gflops']:6.1f} GFLOP/s "
          f"(EDNN/bare = {p['ednn_over_bare']:.3f}; {p['ms_per_256px_image']:.1f} ms per 60-atom image)")
    print(f"  EDNN training step (Adam, MSE):  {train_tps:8.1f} tiles/s  {args.batch / t_train:8.1f} images/s "
          f"(inference/training = {p['train_over_inference']:.2f})")
    print(f"Ising dense net 3x3 tiles, 128x128: {ising_tps:,.0f} tiles/s ({res['ising_dense']['gflops']:.1f} GFLOP/s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
