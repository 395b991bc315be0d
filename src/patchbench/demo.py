"""``patchbench demo``: the embedded offline default.

A real ImageNet MobileNetV2 on real photos (and a Fashion-MNIST CNN on 500 test images when the
dataset is installed): clean predictions, per-image masked PGD (PatchZero §4.1 settings) and a universal
patch (Brown et al. 2017, with EOT) at 2% and 5% of the image area → ``index.html`` + ``results.json``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List

import torch

from .bench.report import GalleryItem, Report, write_csv, write_json

AREAS = (0.02, 0.05)


class _Progress:
    def __init__(self, total: int):
        self.total, self.i, self.t0 = total, 0, time.time()

    def step(self, msg: str) -> None:
        self.i += 1
        print(f"[{self.i}/{self.total}] {msg}  (t={time.time() - self.t0:.0f}s)", flush=True)


def _caption(model, pred, conf, y=None) -> str:
    name = model.class_names[int(pred)]
    mark = "" if y is None else (" ✓" if int(pred) == int(y) else " ✗")
    return f"{name} ({float(conf):.2f}){mark}"


def _row(model_name, dataset, attack, area, n, clean, robust, **extra) -> dict:
    r = {"model": model_name, "dataset": dataset, "attack": attack, "patch_area": area, "n": n,
         "clean_acc": clean.value, "clean_acc_ci": [clean.lo, clean.hi],
         "robust_acc": robust.value, "robust_acc_ci": [robust.lo, robust.hi]}
    r.update(extra)
    return r


def _masked_pgd_rows(model, model_name: str, dataset: str, x, y, rep: Report, rows: List[dict],
                     prog: _Progress, steps: int, seed: int, show: int, min_side: int) -> None:
    """Masked PGD at every demo area (one evaluation cell each, :func:`patchbench.evaluate`): one
    results row and one gallery (clean / patched / mask) each."""
    from . import attacks
    from .evaluation import evaluate
    from .patches import Threat

    pred, conf = model.predict(x)   # the gallery's captions
    g = torch.Generator().manual_seed(seed)
    for area in AREAS:
        threat = Threat(area=area, shape="square", placement="random")
        ev = evaluate(model, x, y, attacks.MaskedPGD(steps=steps, early_stop=True), None, threat,
                      generator=g)
        res, robust = ev.result, ev.robust
        p_adv, c_adv = model.predict(res.x_adv)
        rows.append(_row(model_name, dataset, "masked-pgd", area, x.shape[0], ev.clean, robust,
                         asr=ev.asr.value, steps=steps, universal=False))
        prog.step(f"{model_name} masked PGD {area:.0%}: robust accuracy {robust}")
        items = []
        for i in range(min(show, x.shape[0])):
            items += [GalleryItem(x[i], "clean: " + _caption(model, pred[i], conf[i], y[i])),
                      GalleryItem(res.x_adv[i], "patched: " + _caption(model, p_adv[i], c_adv[i], y[i])),
                      GalleryItem(res.mask[i], "mask")]
        rep.heading(f"Masked PGD, {area:.0%} square patch, {steps} iterations", 3)
        rep.gallery(items, columns=6, min_side=min_side)


def _attack_imagenet(model, x, y, names, rep: Report, rows: List[dict], prog: _Progress,
                     steps: int, uni_steps: int, device, seed: int) -> None:
    from .metrics.classification import accuracy

    pred, conf = model.predict(x)
    clean = accuracy(pred, y)
    gallery: List[GalleryItem] = []
    for i in range(x.shape[0]):
        gallery.append(GalleryItem(x[i], f"{names[i]} → {_caption(model, pred[i], conf[i], y[i])}"))
    rep.heading("MobileNetV2 on real photos (ImageNet classes)")
    rep.paragraph(f"Clean accuracy {clean}. Labels are human-chosen from the image content "
                  "(patchbench.data.samples, see sample_info for each reason).")
    rep.gallery(gallery, columns=min(6, len(gallery)))
    _masked_pgd_rows(model, "mobilenet_v2", "real-photos", x, y, rep, rows, prog, steps, seed,
                     show=x.shape[0], min_side=128)
    _universal_imagenet(model, x, y, rep, rows, prog, uni_steps, seed)


def _augment(x: torch.Tensor, copies: int, g: torch.Generator) -> torch.Tensor:
    """Random 80–100% crops (resized back) and horizontal flips: a small data stream from few photos."""
    import torch.nn.functional as F

    n, _, h, w = x.shape
    out = []
    for _ in range(copies):
        s = 0.8 + 0.2 * torch.rand(n, generator=g)
        for i in range(n):
            ch, cw = int(h * s[i]), int(w * s[i])
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            crop = x[i:i + 1, :, top:top + ch, left:left + cw]
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            out.append(crop.flip(-1) if bool(torch.rand(1, generator=g) < 0.5) else crop)
    return torch.cat(out).clamp(0, 1)


def _extra_photos(size: int = 224) -> torch.Tensor:
    """Unlabelled real photos that share no picture with the held-out half of the sample set: more
    variety for the universal patch's training stream (their labels are the model's own answers)."""
    import skimage.data as sd
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from .data.transforms import resize_center_crop, to_tensor

    flower = next(im for f, im in zip(*(lambda d: (d.filenames, d.images))(load_sample_images()))
                  if f.endswith("flower.jpg"))
    arrays = [sd.astronaut(), flower, sd.stereo_motorcycle()[0], sd.immunohistochemistry()]
    return torch.stack([to_tensor(resize_center_crop(Image.fromarray(a), size)) for a in arrays])


def _universal_imagenet(model, x, y, rep, rows, prog, epochs: int, seed: int) -> None:
    """One untargeted universal patch (Brown et al. 2017, with EOT) trained on the even-indexed
    photos plus unlabelled extra photos, scored on the odd-indexed (held-out) photos at three
    random placements each (each split one evaluation cell, with the applied patch as its
    ``attack_result``)."""
    from . import attacks
    from .evaluation import evaluate
    from .patches import EOT, Threat

    placements = 3
    idx = torch.arange(x.shape[0])
    train, held = idx[idx % 2 == 0], idx[idx % 2 == 1]
    extra = _extra_photos(x.shape[-1]).to(x.device)
    pool = torch.cat([x[train], extra])
    labels = torch.cat([y[train], model.predict(extra)[0]])
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = _augment(pool, 2, g), labels.repeat(2)
    for area in AREAS:
        threat = Threat(area=area, shape="circle", placement="random")
        atk = attacks.UniversalPatch(epochs=epochs, batch_size=16, lr=0.3,
                                     eot=EOT(rotation=20, scale=(0.9, 1.1), perspective=0.05))
        patch = atk.fit(model, (x_train, y_train), threat, generator=torch.Generator().manual_seed(seed))
        for split, ids in (("train", train), ("held-out", held)):
            xs, ys = x[ids].repeat(placements, 1, 1, 1), y[ids].repeat(placements)
            res = atk.apply(model, xs, ys, threat, patch, generator=torch.Generator().manual_seed(seed + 1))
            ev = evaluate(model, xs, ys, atk, attack_result=res)
            clean, robust = ev.clean, ev.robust
            p_adv, c_adv = model.predict(res.x_adv)
            rows.append(_row("mobilenet_v2", "real-photos", "universal-patch", area, len(ys), clean,
                             robust, split=split, held_out=split == "held-out", universal=True,
                             placements_per_image=placements, steps=epochs * 2))
        prog.step(f"universal patch {area:.0%}: held-out accuracy {clean} → {robust}")
        rep.heading(f"Universal patch (Brown et al., untargeted, EOT), {area:.0%} circle", 3)
        rep.paragraph(f"Trained on {len(train)} labelled + {extra.shape[0]} unlabelled photos "
                      f"(random crops/flips), scored on the {len(held)} held-out photos at "
                      f"{placements} random placements each: accuracy {clean} → {robust}.", "note")
        k = len(held)
        items = [GalleryItem(patch, "the patch")]
        items += [GalleryItem(res.x_adv[i], f"held-out: {_caption(model, p_adv[i], c_adv[i], ys[i])}")
                  for i in range(k)]
        rep.gallery(items, columns=min(6, len(items)))


def _attack_fmnist(rep: Report, rows: List[dict], prog: _Progress, n: int, steps: int,
                   seed: int, device) -> None:
    from . import models
    from .data.fashion_mnist import load_fashion_mnist

    x, y = load_fashion_mnist("test", limit=n)
    x, y = x.to(device), y.to(device)
    model = models.load("fmnist_cnn_small", device=device)
    rep.heading(f"Fashion-MNIST CNN ({n} test images)")
    _masked_pgd_rows(model, "fmnist_cnn_small", "fashion-mnist", x, y, rep, rows, prog, steps, seed,
                     show=6, min_side=112)


def _summary_table(rep: Report, rows: List[dict]) -> None:
    cols = ["model", "dataset", "attack", "patch_area", "split", "n", "clean_acc", "robust_acc", "asr"]
    shown = [{c: r.get(c, "") for c in cols} for r in rows]
    rep.table(shown, cols, caption="Results (accuracy with 95% Wilson intervals in results.json)",
              text_columns=["model", "dataset", "attack", "split"])


def run_demo(out_dir="reports/demo", quick: bool = False, seed: int = 0, device="cpu") -> Path:
    """Run the demo and write ``out_dir/index.html``, ``results.json`` and ``results.csv``.
    The arguments are checked before any model is loaded."""
    from . import data, models
    from ._validation import check_bool, check_device, check_path, check_seed

    out = check_path(out_dir, "out_dir", kind="dir", must_exist=False)
    quick, seed = check_bool(quick, "quick"), check_seed(seed, "seed")
    device = check_device(device, "device")
    torch.manual_seed(seed)
    steps = 20 if quick else 100
    uni_epochs = 5 if quick else 40
    fm_n = 100 if quick else 500
    have_fm = _fashion_mnist_available()
    prog = _Progress(1 + 2 * len(AREAS) + (len(AREAS) if have_fm else 0) + 1)
    rep = Report("patchbench demo — physical patches against real models")
    rep.paragraph("Everything here ran offline on real pretrained weights and real photos. Masked PGD: "
                  "per-image patch, ε=1.0, step 0.01, up to 100 iterations (PatchZero §4.1; a batch "
                  "stops early once every image is fooled, which leaves each image's success "
                  "unchanged); universal: one patch for all images, trained with expectation over "
                  "placements and transforms (Brown et al. 2017).", "note")
    rows: List[dict] = []
    model = models.load("mobilenet_v2", device=device)
    x, y = data.samples("imagenet", device=device)
    names = [s.name for s in data.sample_info("imagenet")]
    prog.step(f"loaded MobileNetV2 and {x.shape[0]} real photos")
    summary_at = len(rep._parts)
    _attack_imagenet(model, x, y, names, rep, rows, prog, steps, uni_epochs, device, seed)
    if have_fm:
        _attack_fmnist(rep, rows, prog, fm_n, steps, seed, device)
    else:
        rep.paragraph("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): "
                      "its section was skipped.", "note")
    tail = Report("")
    _summary_table(tail, rows)
    rep._parts[summary_at:summary_at] = tail._parts
    write_json(rows, out / "results.json")
    write_csv(rows, out / "results.csv")
    path = rep.save(out)
    prog.step(f"report written to {path}")
    return path


def _fashion_mnist_available() -> bool:
    try:
        from .data.fashion_mnist import load_fashion_mnist
        load_fashion_mnist("test")
        return True
    except (FileNotFoundError, LookupError, ValueError, OSError):
        return False
