"""``patchbench attack``: run one patch attack on a folder of images and write a small report.

Labels: with class sub-folders nothing is known about how the user's folder names map to the model's
classes, so the reference label of each image is the model's own clean prediction — the attack then
measures how often a patch changes the model's answer (the untargeted threat of PatchZero §4.1).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import List, Optional

import torch

from .bench.report import GalleryItem, Report, write_json
from .data.folders import IMG_EXTENSIONS
from .data.transforms import _as_hw


def _flag_error(flag: str, e: Exception) -> Exception:
    kind = next(k for k in (FileNotFoundError, TypeError, LookupError, ValueError) if isinstance(e, k))
    return kind(f"{flag}: {e}")


def build_attack(attack: str, steps: Optional[int] = None):
    """The registered attack ``attack``; ``steps`` sets its iteration count — the constructor's
    ``steps`` argument, or ``epochs`` for attacks that train a universal patch."""
    from . import attacks
    from ._validation import check_positive_int

    try:
        atk = attacks.get(attack)
    except (LookupError, TypeError) as e:
        raise _flag_error("--attack", e) from None
    if steps is None:
        return atk
    steps = check_positive_int(steps, "--steps")
    params = inspect.signature(type(atk).__init__).parameters
    key = next((k for k in ("steps", "epochs", "iterations") if k in params), None)
    if key is None:
        raise ValueError(f"--steps: attack {attack!r} has no iteration count to set (its options: "
                         f"{', '.join(k for k in params if k != 'self')})")
    return attacks.get(attack, **{key: steps})


def _image_paths(images) -> List[Path]:
    """The image files of ``images``: a folder (its images, or its class sub-folders' images), a
    file or a list of files."""
    from .data.folders import ImageFolder, image_paths

    try:
        p = Path(images) if isinstance(images, (str, os.PathLike)) else None
        if p is not None and p.is_dir() and not any(
                f.is_file() and f.suffix.lower() in IMG_EXTENSIONS for f in p.iterdir()) and \
                any(d.is_dir() for d in p.iterdir()):
            return [f for f, _ in ImageFolder(p).samples]
        return image_paths(images)
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise _flag_error("--images", e) from None


def run_attack_command(model: str, attack: str, area: float, shape: str, images: str, out: str,
                       steps: Optional[int] = None, target: Optional[int] = None, seed: int = 0,
                       device: str = "cpu") -> Path:
    """Attack ``model`` on the images of ``images`` and write ``out/index.html``, ``results.json``
    and ``out/adversarial/*.png``; returns the report's path. Every argument is checked (and the
    image folder listed) before the model is loaded or the attack runs."""
    from . import models
    from ._validation import check_device, check_fraction, check_int, check_path, check_seed
    from .data.folders import load_images
    from .evaluation import evaluate
    from .patches import Threat

    device = check_device(device, "--device")
    seed = check_seed(seed, "--seed")
    out_dir = check_path(out, "--out", kind="dir", must_exist=False)
    if target is not None:
        target = check_int(target, "--target", minimum=0)
    area = check_fraction(area, "--area")
    try:
        threat = Threat(area=area, shape=shape, placement="random")
    except (ValueError, TypeError, LookupError) as e:
        raise _flag_error("--shape", e) from None
    atk = build_attack(attack, steps)
    try:
        models.get_spec(model)
    except (LookupError, TypeError) as e:
        raise _flag_error("--model", e) from None
    paths = _image_paths(images)
    net = models.load(model, device=device)
    if target is not None and target >= net.num_classes:
        raise ValueError(f"--target: expected a class index in [0, {net.num_classes}) for "
                         f"{model!r}, got {target}")
    size = net.input_size or 224
    mode = "L" if net.channels == 1 else "RGB"
    try:
        threat.patch_size(_as_hw(size))
    except (ValueError, TypeError) as e:
        raise _flag_error("--area", e) from None
    try:
        x = load_images(paths, size=size, mode=mode, device=device)
    except (ValueError, FileNotFoundError) as e:
        raise _flag_error("--images", e) from None
    pred, conf = net.predict(x)
    tgt = None
    if target is not None:
        keep = pred != target
        if not bool(keep.any()):
            raise ValueError(f"--target: the model already classifies every image as class {target} "
                             f"({net.class_names[target]}); there is nothing to attack")
        if not bool(keep.all()):
            print(f"skipping {int((~keep).sum())} image(s) the model already classifies as the "
                  f"target class {target}", flush=True)
            x, pred, conf = x[keep], pred[keep], conf[keep]
            paths = [p for p, k in zip(paths, keep.tolist()) if k]
        tgt = torch.full_like(pred, target)
    print(f"attacking {x.shape[0]} images with {atk!r} at {area:.1%} {shape} patches", flush=True)
    # one evaluation cell, the model's own answers as labels: robust accuracy = unchanged answers
    ev = evaluate(net, x, pred, atk, None, threat, generator=torch.Generator().manual_seed(seed),
                  target=tgt)
    res, asr, changed = ev.result, ev.asr, ev.robust
    p_adv, c_adv = net.predict(res.x_adv)
    rows = [{"model": model, "attack": attack, "patch_area": area, "shape": shape, "n": x.shape[0],
             "target": target, "success_rate": asr.value, "success_ci": [asr.lo, asr.hi],
             "unchanged_rate": changed.value}]
    (out_dir / "adversarial").mkdir(parents=True, exist_ok=True)
    from .data.transforms import to_pil
    rep = Report(f"patchbench attack: {attack} on {model}")
    rep.table(rows, text_columns=["model", "attack", "shape"])
    items = []
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) < len(stems):                 # class sub-folders may repeat file names
        stems = [f"{Path(p).parent.name}_{Path(p).stem}" for p in paths]
    for i, p in enumerate(paths):
        to_pil(res.x_adv[i]).save(out_dir / "adversarial" / (stems[i] + ".png"))
        items += [GalleryItem(x[i], f"{Path(p).name}: {net.class_names[int(pred[i])]} ({float(conf[i]):.2f})"),
                  GalleryItem(res.x_adv[i], f"patched: {net.class_names[int(p_adv[i])]} "
                                            f"({float(c_adv[i]):.2f})")]
    rep.gallery(items, columns=4)
    write_json(rows, out_dir / "results.json")
    path = rep.save(out_dir)
    print(f"success {asr}; report {path}", flush=True)
    return path
