"""What ``patchbench attack`` writes, and the rule for its run folder.

Run folder (``--out DIR``): a new or empty folder is used as it is. A folder holding a previous
``patchbench attack`` run (its ``results.json`` says ``"tool": "patchbench attack"``) is refused
unless ``--overwrite``; then exactly the files that run listed (``results.json``'s ``files``) are
deleted before the new run writes, so no stale image remains, and files patchbench did not write
are kept. Any other non-empty folder is refused, with or without ``--overwrite``: it is never
mixed into or cleaned. ``results.json`` is written first (``"complete": false``, listing the files
the run will write) and again at the end, so an interrupted run is still recognised and replaced.

Original size: the model sees each photo resized (shorter side, bicubic) and centre-cropped
(:func:`patchbench.data.transforms.resize_center_crop`). The adversarial photo at its original size is
the attacked region pasted back: the mask is mapped to the original pixels (nearest), the attacked
pixels are upsampled (bilinear) from the model's resolution, and every pixel outside the mask keeps
the original photo's value exactly: ``adv = orig · (1 − M↑) + up(x_adv) · M↑``. Resampling changes
the patch's pixels, so a full-size file read back (resized again) need not fool the model: results.json
records that prediction too (``adversarial_saved``), and ``model_input/`` holds the attacked images
at the model's resolution, exactly as attacked (8-bit PNG).

Printable patch: the patch pixels as optimised (a universal patch's ``C×h×w``; for a per-image
attack, each image's patch cropped to its mask's bounding box), enlarged by an integer factor with
nearest neighbour so the print has at least 300 dpi without resampling, saved as PNG with its DPI
set so that its longer side prints at ``print_size_cm``; pixels outside a non-square shape are
transparent. Its non-printability score (:func:`patchbench.patches.nps_loss`, Sharif et al. CCS 2016
Eq. 4, averaged over the shape's pixels, with the default 27-colour grid, not a measured printer
palette) is recorded beside it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

TOOL = "patchbench attack"
MANIFEST = "results.json"
MIN_PRINT_DPI = 300
_MAX_SIDE = 6000


def previous_run(out_dir: Path) -> Optional[dict]:
    """The manifest of a previous ``patchbench attack`` run in ``out_dir``, or ``None``."""
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == TOOL else None


def check_out_dir(out_dir: Path, overwrite: bool) -> Optional[List[str]]:
    """Apply the run-folder rule (module doc) without touching anything: ``None`` for a new or
    empty folder, the previous run's files to delete under ``--overwrite``; ``ValueError`` naming
    ``--out`` otherwise."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise ValueError(f"--out: {str(out_dir)!r} is an existing file, expected a directory")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return None
    prev = previous_run(out_dir)
    if prev is None:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise ValueError(f"--out: {str(out_dir)!r} is not empty and holds no patchbench attack run "
                         f"({shown}); choose a new or empty folder (--overwrite only replaces a "
                         f"previous patchbench attack run, it never deletes other files)")
    if not overwrite:
        raise ValueError(f"--out: {str(out_dir)!r} holds a previous patchbench attack run "
                         f"({prev.get('parameters', {}).get('model', '?')}, "
                         f"{prev.get('parameters', {}).get('attack', '?')}); pass --overwrite to "
                         f"replace it, or choose a new --out")
    files = prev.get("files", [])
    return [f for f in files if isinstance(f, str)] + [MANIFEST]


def remove_previous(out_dir: Path, files: Sequence[str]) -> int:
    """Delete the listed files of a previous run (never outside ``out_dir``), then the sub-folders
    they leave empty; returns how many files went."""
    root, gone, parents = out_dir.resolve(), 0, set()
    for rel in files:
        p = (out_dir / rel).resolve()
        if root not in p.parents or not p.is_file():
            continue
        p.unlink()
        gone += 1
        parents.add(p.parent)
    for d in sorted(parents, key=lambda q: len(q.parts), reverse=True):
        while d != root and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent
    return gone


def unique_stems(paths: Sequence[Path], root: Optional[Path]) -> List[str]:
    """One file stem per image: its path under ``root`` without the extension, ``/`` → ``__``;
    the extension is kept (``a_jpg``) where two files would share a stem."""
    def rel(p: Path) -> Path:
        try:
            return p.relative_to(root) if root is not None and root.is_dir() else Path(p.name)
        except ValueError:
            return Path(p.name)
    base = ["__".join(rel(p).with_suffix("").parts) for p in paths]
    out = []
    for p, b in zip(paths, base):
        out.append(f"{b}_{p.suffix.lstrip('.').lower()}" if base.count(b) > 1 else b)
    return out


def original_size(path: Path, x_adv: Tensor, mask: Tensor, mode: str) -> tuple:
    """``(adversarial photo C×H0×W0, mask 1×H0×W0)`` at the original file's size (module doc):
    the file is decoded again exactly as the loader did (bicubic resize, then centre crop)."""
    from .data.transforms import _crop_box, to_tensor

    oh, ow = x_adv.shape[-2:]
    with Image.open(path) as im:
        im.load()
        img = im.copy()
    w, h = img.size
    orig = to_tensor(img, mode)
    _, (left, top, right, bottom), (sh, sw) = _crop_box(h, w, oh, ow)
    scaled = orig if (sh, sw) == (h, w) else to_tensor(img.resize((sw, sh), Image.Resampling.BICUBIC), mode)
    canvas, m = scaled.clone(), torch.zeros(1, sh, sw)
    canvas[:, top:bottom, left:right] = x_adv.detach().float().cpu()
    m[:, top:bottom, left:right] = (mask.detach().float().cpu() > 0.5).float()
    if (sh, sw) != (h, w):
        canvas = F.interpolate(canvas[None], size=(h, w), mode="bilinear",
                               align_corners=False)[0].clamp(0, 1)
        m = F.interpolate(m[None], size=(h, w), mode="nearest")[0]
    return orig * (1 - m) + canvas * m, m


def save_printable_patch(patch: Tensor, shape: Tensor, path: Path, print_size_cm: float) -> dict:
    """Save ``patch`` (``C×h×w`` in [0, 1]; ``shape`` its ``h×w`` 0/1 mask) as a PNG that prints
    with its longer side ``print_size_cm`` long (module doc); returns what results.json records."""
    from .patches import nps_loss
    from .data.transforms import to_pil

    patch = patch.detach().float().cpu().clamp(0, 1)
    shape = shape.detach().float().cpu().reshape(patch.shape[-2:])
    h, w = patch.shape[-2:]
    native_dpi = max(h, w) / (print_size_cm / 2.54)
    k = max(1, min(math.ceil(MIN_PRINT_DPI / native_dpi), _MAX_SIDE // max(h, w)))
    big = patch.repeat_interleave(k, -2).repeat_interleave(k, -1)
    img = to_pil(big)
    if bool((shape < 0.5).any()):
        alpha = Image.fromarray((shape.repeat_interleave(k, 0).repeat_interleave(k, 1)
                                 * 255).round().to(torch.uint8).numpy(), "L")
        img = img.convert("RGBA" if img.mode == "RGB" else "LA")
        img.putalpha(alpha)
    dpi = native_dpi * k
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, dpi=(dpi, dpi))
    nps = float(nps_loss(patch, mask=shape))
    return {"file": path.name, "pixels": [int(h), int(w)], "saved_pixels": [int(h * k), int(w * k)],
            "print_size_cm": [round(h * k / dpi * 2.54, 3), round(w * k / dpi * 2.54, 3)],
            "dpi": round(dpi, 2), "nps": nps,
            "nps_palette": "default_printable_colors (a 3-level grid per channel; not a measured "
                           "printer palette)"}


def per_image_patch(x_adv: Tensor, mask: Tensor) -> tuple:
    """``(patch C×h×w, shape h×w)``: the attacked pixels of one image inside its mask's bounding box."""
    m = mask.detach().reshape(mask.shape[-2:]) > 0.5
    rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return x_adv[:, r0:r1, c0:c1], m[r0:r1, c0:c1].float()


def versions() -> dict:
    import platform

    import numpy
    import PIL

    from . import __version__
    return {"patchbench": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "numpy": numpy.__version__, "pillow": PIL.__version__}
