"""Throughput of every common corruption (Hendrycks & Dietterich, ICLR 2019, ImageNet-C
definitions) in patchbench's torch implementation.

Two batches: 500×1×28×28 Fashion-MNIST test images (real ones when the idx files are installed,
else uniform noise — the line says which) and 16×3×224×224 real photos from scikit-image. For
each corruption the median over repetitions of one call at severity 3 (after a warm-up), in
images per second of wall-clock time and per CPU-second of this process (the two agree on an idle
machine; on a shared one the wall-clock rate drops with the other processes' share, and with
several threads the CPU-time rate also counts their spin-waits, so use ``--threads 1`` for it).
Last line: ``corruptions slowest=S fastest=F`` (wall-clock images/s, Fashion-MNIST batch).

Usage: ``python perf/corruptions.py [--threads 2] [--reps 3] [--severity 3] [--device cpu]``
"""
from __future__ import annotations

import argparse
import gzip
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from patchbench.corruptions import CORRUPTIONS, corrupt

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def fashion_batch(n: int = 500):
    """``n`` Fashion-MNIST test images ``n×1×28×28`` and where they came from."""
    try:
        from patchbench.data.fashion_mnist import load_fashion_mnist
        return load_fashion_mnist("test", limit=n)[0], "Fashion-MNIST test"
    except (ImportError, FileNotFoundError):
        pass
    if FMNIST.is_file():  # idx3: magic, count, rows, cols (big-endian int32), then uint8 pixels
        raw = gzip.decompress(FMNIST.read_bytes())
        count, rows, cols = np.frombuffer(raw[4:16], dtype=">i4")
        arr = np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, 1, rows, cols)[:n]
        return torch.from_numpy(arr.astype(np.float32) / 255), "Fashion-MNIST test (idx.gz)"
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)), "uniform noise"


def photo_batch(n: int = 16, size: int = 224) -> torch.Tensor:
    """``n`` real RGB photos from scikit-image, centre-cropped and resized to ``size``²."""
    from PIL import Image
    from skimage import data
    arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
              data.stereo_motorcycle()[0], data.immunohistochemistry(), data.hubble_deep_field(),
              data.retina()]
    out = []
    for i in range(n):
        a = arrays[i % len(arrays)]
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
        if i >= len(arrays):
            a = a[:, ::-1]  # mirrored copies fill the batch
        img = Image.fromarray(np.ascontiguousarray(a)).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


# Why a corruption may run more than 10× slower than the fastest (a one-line tensor op such as
# brightness or saturate): the work its ImageNet-C definition asks for, not a Python loop over images
# (except JPEG, on purpose).
REASONS = {
    "jpeg_compression": "a real libjpeg round trip (Pillow), one image at a time, so the artefacts are "
                        "ImageNet-C's exactly; the only corruption not computed as batched tensor ops",
    "snow": "makes a zoomed, thresholded flake layer, motion-blurs it along a per-image angle (one "
            "gather per kernel tap) and adds it twice",
    "glass_blur": "blur, then 1-3 passes of ImageNet-C's sequential pixel shuffle, resolved exactly "
                  "without a loop over pixels (pointer doubling, ~16 gathers per pass), blur again",
    "spatter": "smoothed-noise liquid layer; water follows ImageNet-C's 8-bit OpenCV steps (Canny with "
               "hysteresis, a 5x5 chamfer distance by up to 20 relaxation steps, equalisation, emboss)",
    "zoom_blur": "the mean of 10-16 zoomed copies of every image (one grid_sample per zoom)",
    "elastic_transform": "Gaussian-smoothed random displacement field + affine warp, one grid_sample",
    "shot_noise": "Poisson sampling of every pixel (torch.poisson), costlier than Gaussian draws",
    "motion_blur": "a line kernel at a per-image angle: one edge-clamped gather per tap",
    "fog": "plasma-fractal (diamond-square) noise per image, several upsampling passes",
}


def images_per_second(x: torch.Tensor, name: str, severity: int, reps: int):
    """(wall-clock images/s, images per CPU-second of this process), medians over ``reps`` calls.

    The CPU-time rate is what an unshared machine would give per core-second; on a loaded host
    the wall-clock rate is lower by the share of the cores other processes take."""
    corrupt(x, name, severity, generator=0)  # warm-up
    wall, cpu = [], []
    for r in range(reps):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        corrupt(x, name, severity, generator=r)
        if x.is_cuda:
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return x.shape[0] / statistics.median(wall), x.shape[0] / max(statistics.median(cpu), 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fm, source = fashion_batch()
    fm = fm.to(args.device)
    photos = photo_batch().to(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"severity {args.severity}, {args.threads} threads, device {args.device}, "
          f"load average {load:.1f} on {os.cpu_count()} cores; 28² batch: 500 {source} images; "
          f"224² batch: 16 scikit-image photos")
    print(f"{'corruption':20s} {'28² img/s':>10s} {'28² img/cpu-s':>14s} {'224² img/s':>11s} "
          f"{'224² img/cpu-s':>15s}")
    fm_rates = {}
    for name in CORRUPTIONS:
        fm_rates[name], fm_cpu = images_per_second(fm, name, args.severity, args.reps)
        big, big_cpu = images_per_second(photos, name, args.severity, args.reps)
        print(f"{name:20s} {fm_rates[name]:10.0f} {fm_cpu:14.0f} {big:11.1f} {big_cpu:15.1f}",
              flush=True)
    slow = min(fm_rates, key=fm_rates.get)
    fast = max(fm_rates, key=fm_rates.get)
    print(f"slowest on 28x28: {slow}; fastest: {fast}; ratio {fm_rates[fast] / fm_rates[slow]:.0f}x")
    for name, rate in sorted(fm_rates.items(), key=lambda kv: kv[1]):
        if rate * 10 < fm_rates[fast]:
            print(f"  {name} is {fm_rates[fast] / rate:.0f}x slower than {fast}: "
                  f"{REASONS.get(name, 'no recorded reason')}")
    print(f"corruptions slowest={fm_rates[slow]:.0f} fastest={fm_rates[fast]:.0f}")


if __name__ == "__main__":
    main()
