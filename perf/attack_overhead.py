"""Per-iteration cost of masked PGD, patchbench vs. ART, on MobileNetV2 (batch 8, 224², real photos).

Measures, in one run (warm-up, median of repetitions, fixed thread count):
  * one bare forward + backward w.r.t. the input (parameters frozen) — the floor any attack pays;
  * patchbench ``MaskedPGD`` per iteration: (time(k2 steps) − time(k1 steps)) / (k2 − k1);
  * ART ``ProjectedGradientDescentPyTorch(..., mask=...)`` per iteration, the same difference;
  * success rates of both at equal iterations (PatchZero §4.1 MPGD: ε 1.0, step 0.01) on 5% and 2%
    square masks at random places (the same masks for both).
Last line: ``overhead patchbench=R1 art=R2`` (per-iteration cost / bare forward+backward).

Usage: ``python perf/attack_overhead.py [--threads 1] [--reps 5] [--iters 20] [--device cpu]``
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from _timing import interleaved_medians


def photos(n: int = 8, size: int = 224) -> torch.Tensor:
    """Real photos from scikit-image / scikit-learn, centre-cropped and resized to ``size``²."""
    from skimage import data
    from sklearn.datasets import load_sample_images
    arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
              data.stereo_motorcycle()[0], *load_sample_images().images, data.immunohistochemistry()]
    out = []
    for a in arrays[:n]:
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
        img = Image.fromarray(a).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def bare_fwd_bwd(model, x, y):
    """One forward + backward w.r.t. the input only, parameters frozen."""
    xa = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(xa), y)
    return torch.autograd.grad(loss, xa)[0]


def art_attack(model, iters: int, device: str):
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 224, 224),
                            nb_classes=1000, clip_values=(0.0, 1.0),
                            device_type="gpu" if device.startswith("cuda") else "cpu")
    return clf, ProjectedGradientDescentPyTorch(estimator=clf, norm=np.inf, eps=1.0, eps_step=0.01,
                                                max_iter=iters, targeted=False, num_random_init=0,
                                                batch_size=8, verbose=False)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20, help="iterations for the success comparison")
    ap.add_argument("--k1", type=int, default=1)
    ap.add_argument("--k2", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from patchbench.attacks import MaskedPGD
    from patchbench.models import load
    from patchbench.patches import Threat

    dev = args.device
    sync = (lambda: torch.cuda.synchronize()) if dev.startswith("cuda") else (lambda: None)
    model = load("mobilenet_v2", device=dev)
    x = photos().to(dev)
    with torch.no_grad():
        y = model(x).argmax(1)
    g = torch.Generator().manual_seed(0)
    masks = {a: Threat(area=a, shape="square", placement="random").masks(x, generator=g).to(dev)
             for a in (0.05, 0.02)}
    print(f"device={dev} threads={torch.get_num_threads()} batch={tuple(x.shape)} reps={args.reps}")

    m = masks[0.05]
    xn, yn, mn = x.cpu().numpy(), y.cpu().numpy(), m.expand_as(x).cpu().numpy()
    arts = {k: art_attack(model, k, dev)[1] for k in (args.k1, args.k2)}

    def frozen_bare():
        model.requires_grad_(False)
        bare_fwd_bwd(model, x, y)
        model.requires_grad_(True)

    fns = {"bare": frozen_bare,
           "bare+params": lambda: F.cross_entropy(model(x.detach().requires_grad_(True)), y).backward()}
    for k in (args.k1, args.k2):
        fns[f"ours{k}"] = lambda k=k: MaskedPGD(steps=k, random_start=False).run(model, x, y, m)
        fns[f"art{k}"] = lambda k=k: arts[k].generate(xn, yn, mask=mn)
    t = interleaved_medians(fns, args.reps, sync)
    model.zero_grad(set_to_none=True)
    t_bare = t["bare"]
    t_ours = (t[f"ours{args.k2}"] - t[f"ours{args.k1}"]) / (args.k2 - args.k1)
    t_art = (t[f"art{args.k2}"] - t[f"art{args.k1}"]) / (args.k2 - args.k1)
    print(f"bare forward+backward (input only)   {t_bare * 1e3:8.1f} ms")
    print(f"bare forward+backward (+param grads) {t['bare+params'] * 1e3:8.1f} ms")
    print(f"patchbench MaskedPGD per iteration   {t_ours * 1e3:8.1f} ms  (steps {args.k1}: "
          f"{t[f'ours{args.k1}']:.2f} s, {args.k2}: {t[f'ours{args.k2}']:.2f} s)")
    print(f"ART PGD (mask) per iteration         {t_art * 1e3:8.1f} ms  (max_iter {args.k1}: "
          f"{t[f'art{args.k1}']:.2f} s, {args.k2}: {t[f'art{args.k2}']:.2f} s)")

    for area, mk in masks.items():
        res = MaskedPGD(steps=args.iters, random_start=False).run(model, x, y, mk)
        clf, atk = art_attack(model, args.iters, dev)
        x_art = atk.generate(xn, yn, mask=mk.expand_as(x).cpu().numpy())
        art_succ = float((clf.predict(x_art).argmax(1) != yn).mean())
        print(f"success @ {args.iters} iters, {area:.0%} mask: patchbench {res.success_rate:.3f}  "
              f"art {art_succ:.3f}")
    print(f"overhead patchbench={t_ours / t_bare:.3f} art={t_art / t_bare:.3f}")


if __name__ == "__main__":
    main()
