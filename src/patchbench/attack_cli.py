"""``patchbench attack``: run one patch attack on a folder of images and write a small report.

Labels: with class sub-folders nothing is known about how the user's folder names map to the model's
classes, so the reference label of each image is the model's own clean prediction — the attack then
measures how often a patch changes the model's answer (the untargeted threat of PatchZero §4.1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .bench.report import GalleryItem, Report, write_json


def run_attack_command(model: str, attack: str, area: float, shape: str, images: str, out: str,
                       steps: Optional[int] = None, target: Optional[int] = None, seed: int = 0,
                       device: str = "cpu") -> Path:
    from . import attacks, models
    from .data.folders import image_paths, load_images
    from .metrics.classification import accuracy, success_rate
    from .patches import Threat

    threat = Threat(area=area, shape=shape, placement="random")      # validates area/shape first
    net = models.load(model, device=device)
    atk = attacks.get(attack, **({"steps": steps} if steps is not None else {}))
    size = net.input_size or 224
    mode = "L" if net.channels == 1 else "RGB"
    paths = image_paths(images)
    x = load_images(paths, size=size, mode=mode, device=device)
    pred, conf = net.predict(x)
    tgt = None
    if target is not None:
        if not 0 <= target < net.num_classes:
            raise ValueError(f"--target: expected a class index in [0, {net.num_classes}), got {target}")
        tgt = torch.full_like(pred, target)
    print(f"attacking {x.shape[0]} images with {atk!r} at {area:.1%} {shape} patches", flush=True)
    res = atk.run(net, x, pred, threat, target=tgt, generator=torch.Generator().manual_seed(seed))
    p_adv, c_adv = net.predict(res.x_adv)
    asr = success_rate(pred, p_adv, pred, target=tgt)
    changed = accuracy(p_adv, pred)
    rows = [{"model": model, "attack": attack, "patch_area": area, "shape": shape, "n": x.shape[0],
             "target": target, "success_rate": asr.value, "success_ci": [asr.lo, asr.hi],
             "unchanged_rate": changed.value}]
    out_dir = Path(out)
    (out_dir / "adversarial").mkdir(parents=True, exist_ok=True)
    from .data.transforms import to_pil
    rep = Report(f"patchbench attack: {attack} on {model}")
    rep.table(rows, text_columns=["model", "attack", "shape"])
    items = []
    for i, p in enumerate(paths):
        to_pil(res.x_adv[i]).save(out_dir / "adversarial" / (Path(p).stem + ".png"))
        items += [GalleryItem(x[i], f"{Path(p).name}: {net.class_names[int(pred[i])]} ({float(conf[i]):.2f})"),
                  GalleryItem(res.x_adv[i], f"patched: {net.class_names[int(p_adv[i])]} "
                                            f"({float(c_adv[i]):.2f})")]
    rep.gallery(items, columns=4)
    write_json(rows, out_dir / "results.json")
    path = rep.save(out_dir)
    print(f"success {asr}; report {path}", flush=True)
    return path
