"""Inference cost of PAIR: one purification (both passes) plus the hasher, over the hasher alone.

PAIR (ACM MM 2024, §4.2): a fresh random mask, the masked autoencoder's reconstruction, then a
second pass with the inverted mask on the reconstruction — the deployed defense
(``PAIR.__call__``, input checks included) in front of the retrieval model. Measured at batch 64
on 3×64×64 images (the fmnist-objects queries when that dataset loads, else uniform noise: the cost
does not depend on the content), one warm-up, then interleaved repetitions, median wall time, fixed
threads, no autograd.

The hasher is the shipped CSQ model (``patchbench.models.load("csq_fmnist_objects_64")``) when it
loads; otherwise a stand-in with the same backbone and input size — the real ImageNet MobileNetV2
at 64×64 with a 64-d linear head. The output says which. The masked autoencoder is a trained PAIR
checkpoint when ``--checkpoint`` names one, else an untrained one of the default size (its weights
do not change its cost).

Last line: ``cost pair=M`` (goal M ≤ 3).

Usage: ``python perf/pair_cost.py [--threads 2] [--reps 7] [--batch 64] [--device cpu]
[--checkpoint runs/pair/pair_final.pt]``
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from _timing import interleaved_medians

SHIPPED_HASHER = "csq_fmnist_objects_64"


def hasher_and_label(device):
    """The shipped hasher when it loads, else the MobileNetV2 + 64-d head stand-in."""
    from patchbench.models import load
    try:
        return load(SHIPPED_HASHER, device=device).eval(), f"shipped hasher {SHIPPED_HASHER!r}"
    except (LookupError, FileNotFoundError, ValueError, TypeError, ImportError) as e:
        why = str(e).splitlines()[0][:120]
    clf = load("mobilenet_v2", device=device).eval()
    head = nn.Linear(1280, 64).to(device)

    def stand_in(x):
        return head(clf.net.forward_features(clf.normalize(x)))
    return stand_in, (f"stand-in: ImageNet MobileNetV2 at 64×64 + 64-d linear head "
                      f"({SHIPPED_HASHER!r} did not load: {why})")


def images(n: int, device) -> torch.Tensor:
    try:
        from patchbench.data import load_dataset
        x, _ = load_dataset("fmnist-objects", "query", n=n)
    except (LookupError, FileNotFoundError, ValueError):
        x = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return x.to(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", default=None, help="a trained PAIR checkpoint (optional)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    from patchbench.defenses.pair import PAIR
    from patchbench.models.mae import MaskedAutoencoder

    hasher, label = hasher_and_label(dev)
    if a.checkpoint:
        pair = PAIR.load(a.checkpoint, device=dev, image_size=(64, 64))
    else:
        torch.manual_seed(0)
        pair = PAIR(MaskedAutoencoder(image_size=64).to(dev)).eval()
    x = images(a.batch, dev)
    with torch.no_grad():
        t = interleaved_medians({"hasher": lambda: hasher(x), "pair": lambda: hasher(pair(x))},
                                a.reps, sync)
    m = t["pair"] / t["hasher"]
    cfg = pair.mae.config
    print(f"device {dev}, threads {a.threads}, batch {x.shape[0]}×3×64×64, median of {a.reps}")
    print(f"hasher: {label}")
    print(f"PAIR: {pair.passes} passes, mask {pair.mask} α={pair.mask_ratio} ({pair.sampling}); "
          f"MAE patch {cfg['patch_size']}, encoder {cfg['dim']}×{cfg['depth']}, decoder "
          f"{cfg['decoder_dim']}×{cfg['decoder_depth']}"
          + (f", {a.checkpoint}" if a.checkpoint else ", untrained weights (same cost)"))
    print(f"hasher alone         {t['hasher'] * 1e3:8.1f} ms/batch")
    print(f"PAIR + hasher        {t['pair'] * 1e3:8.1f} ms/batch  = {m:.2f}× the hasher (goal ≤ 3)")
    print(f"cost pair={m:.2f}")


if __name__ == "__main__":
    main()
