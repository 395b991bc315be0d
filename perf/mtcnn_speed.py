"""MTCNN throughput: one batched ``detect`` over N images vs a per-image loop over the same images.

Batching runs every pyramid scale of all images through P-Net at once and all R-/O-Net crops of all
images in bounded chunks. Both paths give the same detections (checked below). Prints images/s for
both and, as its last line, ``mtcnn batched_speedup=S``. The ratio grows with the number of images and
shrinks with their size (per-call overhead vs convolution work): measured on the 2-core CPU, 2 threads,
16×256² 1.8–1.9× (median of 10; best-of-N runs gave 1.6–1.9×), 32×192² (the face-patch preset's
test set) 2.4×, 32×128² 3.8×.

Usage: ``python perf/mtcnn_speed.py [--n 16] [--size 256] [--device cpu] [--threads 2] [--repeats 10]``
"""
from __future__ import annotations

import argparse

import torch

from patchbench.data.faces import composite_faces
from patchbench.models.mtcnn import load_mtcnn

from _timing import interleaved_medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--repeats", type=int, default=10,
                    help="interleaved repetitions per path; the median is reported (this VM is noisy)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    model = load_mtcnn(device=args.device)
    x = composite_faces(args.n, size=(args.size, args.size), generator=0, split="all").images.to(args.device)
    batched = model.detect(x)                                            # warm-up + reference output
    looped = [model.detect(x[i:i + 1])[0] for i in range(len(x))]
    for a, b in zip(batched, looped):
        if len(a.boxes) != len(b.boxes) or not torch.allclose(a.boxes, b.boxes, atol=1e-2):
            raise SystemExit("batched and per-image detections differ")

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    t = interleaved_medians({"batched": lambda: model.detect(x),
                             "loop": lambda: [model.detect(x[i:i + 1]) for i in range(len(x))]},
                            args.repeats, sync)
    t_batch, t_loop = t["batched"], t["loop"]
    faces = sum(len(d.boxes) for d in batched)
    print(f"device={args.device} threads={torch.get_num_threads()} images={args.n}x{args.size}^2 "
          f"faces_found={faces}")
    print(f"batched: {args.n / t_batch:.1f} images/s ({t_batch:.3f} s)")
    print(f"per-image loop: {args.n / t_loop:.1f} images/s ({t_loop:.3f} s)")
    print(f"mtcnn batched_speedup={t_loop / t_batch:.2f}")


if __name__ == "__main__":
    main()
