"""Inference cost of three patch defenses against MobileNetV2 at 224² (real photos, CPU by default).

Measures, in one run (one warm-up, then interleaved repetitions, median wall time, fixed threads):
  * LGS (Naseer et al. 2019; ELGS eq. 5) time per image as a fraction of one MobileNetV2 forward per
    image — goal ≤ 0.10;
  * PatchZero (Xu et al., WACV 2023, §3.2) defended inference — MobileNetV2-backbone segmenter
    (``patchbench.models.segmenter``), threshold, dilation, mean repaint, then MobileNetV2 — as a
    multiple of undefended MobileNetV2 inference — goal ≤ 1.5×. The segmenter's weights do not change
    its cost: it is built untrained (``pretrained=False``), so no checkpoint is needed;
  * PatchCleanser (Xiang et al., USENIX Security 2022, Algorithm 1) forward-equivalents per image
    (masked images passed through the model) on the offline ImageNet photos, 5% square patch, k = 6
    (36 masks) — goal ≤ 37 for images whose first round agrees; the mean over those images and over
    all images is reported.
Last line: ``cost lgs=F patchzero=M patchcleanser=E`` (E = the mean over first-round-agreeing images).

Usage: ``python perf/defense_cost.py [--threads 2] [--reps 7] [--batch 8] [--device cpu]``
"""
from __future__ import annotations

import argparse

import torch

from _timing import interleaved_medians


def batch_of_photos(n: int, device) -> torch.Tensor:
    """``n`` real photos (the offline ImageNet samples, repeated if ``n`` > 7), 224², in [0, 1]."""
    from patchbench.data import samples
    x, _ = samples("imagenet")
    reps = -(-n // x.shape[0])
    return x.repeat(reps, 1, 1, 1)[:n].to(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    from patchbench.data import samples
    from patchbench.defenses import LGS, Defended, PatchCleanser, PatchZero
    from patchbench.models import load
    from patchbench.models.base import IMAGENET_MEAN
    from patchbench.models.segmenter import MobileNetV2Segmenter

    model = load("mobilenet_v2", device=dev).eval().requires_grad_(False)
    x = batch_of_photos(a.batch, dev)
    lgs = LGS()
    seg = MobileNetV2Segmenter(pretrained=False, input_size=(224, 224)).to(dev).eval()
    pz = PatchZero(seg, fill=IMAGENET_MEAN, input_size=(224, 224)).to(dev).eval()
    defended = Defended(model, pz).eval()

    with torch.no_grad():
        t = interleaved_medians({"model": lambda: model(x), "lgs": lambda: lgs(x),
                                 "patchzero": lambda: defended(x)}, a.reps, sync)
    lgs_frac = t["lgs"] / t["model"]
    pz_mult = t["patchzero"] / t["model"]
    n = x.shape[0]
    print(f"device {dev}, threads {a.threads}, batch {n}×3×224×224, median of {a.reps}")
    print(f"MobileNetV2 forward       {t['model'] / n * 1e3:8.2f} ms/image")
    print(f"LGS                       {t['lgs'] / n * 1e3:8.2f} ms/image  = {lgs_frac:.3f} forwards "
          f"(goal ≤ 0.10)")
    print(f"PatchZero + MobileNetV2   {t['patchzero'] / n * 1e3:8.2f} ms/image  = {pz_mult:.3f}× "
          f"undefended (goal ≤ 1.5×; untrained segmenter weights, same cost)")

    xs, ys = samples("imagenet", device=dev)
    pc = PatchCleanser(patch_size=0.05, image_size=224, k=6, fill=IMAGENET_MEAN, batch_size=64).to(dev)
    pred = pc.classify(model, xs).argmax(1)
    fe = pc.last_forward_counts.float()
    agree = pc.last_cases == 1
    fe_agree = float(fe[agree].mean()) if bool(agree.any()) else float("nan")
    print(f"PatchCleanser ({pc.num_masks} masks, 5% patch) on {len(xs)} photos: forward-equivalents "
          f"per image {fe.tolist()}; cases {pc.last_cases.tolist()}; accuracy "
          f"{float((pred.cpu() == ys.cpu()).float().mean()):.3f}")
    print(f"  mean over first-round-agreeing images ({int(agree.sum())}): {fe_agree:.1f} (goal ≤ 37); "
          f"over all {len(xs)}: {float(fe.mean()):.1f}")
    print(f"cost lgs={lgs_frac:.3f} patchzero={pz_mult:.3f} patchcleanser={fe_agree:.1f}")


if __name__ == "__main__":
    main()
