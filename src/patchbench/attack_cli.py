"""``patchbench attack``: one patch attack on a folder of photos, for any model, as a tool.

* ``--model``: a zoo name, ``torchvision:NAME``, ``timm:NAME``, ``module:function`` or
  ``file.py:function`` (:mod:`patchbench.models.sources`).
* Images: the top level of ``--images`` and its class sub-folders (any depth). A sub-folder's name
  is matched to the model's classes, folded like every name (case, ``_``, ``-`` and spaces are one;
  ``egyptian_mau`` is ImageNet's "Egyptian Mau"), or read as a class index (``285``); its images then
  have that class as their *label*. Images of a folder that matches no class, and top-level images,
  take the model's clean prediction as their reference (the untargeted threat of PatchZero §4.1:
  success = the patch changes the model's answer); the report and results.json say which is which.
  Non-image and undecodable files are listed in one warning and skipped.
* Success is counted over the images the model gets right (labelled images it misclassifies are
  not attacked successfully or not: they are "not eligible"), as in :func:`patchbench.evaluate`.
* ``--target``: a class name (folded; an unknown one gets close matches) or an index.
* Outputs and the ``--out`` rule: :mod:`patchbench.attack_outputs`.
"""
from __future__ import annotations

import inspect
import math
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


MAX_AREA = 0.5


class SkippedFilesWarning(UserWarning):
    """Files of ``--images`` that were not read (not images, or undecodable): one warning lists all."""


def _flag_error(flag: str, e: Exception) -> Exception:
    kind = next(k for k in (FileNotFoundError, TypeError, LookupError, ValueError) if isinstance(e, k))
    msg = str(e)
    return kind(msg if msg.startswith(f"{flag}:") else f"{flag}: {msg}")


def check_area(value, name: str = "--area") -> float:
    """A patch area as a fraction of the image in (0, 0.5]; a percentage gets "did you mean"."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{name}: expected a fraction of the image such as 0.05, got "
                             f"{value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number in (0, {MAX_AREA}], got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a fraction in (0, {MAX_AREA}], got {v}")
    if v <= 0:
        raise ValueError(f"{name}: the patch must cover some of the image: expected a fraction in "
                         f"(0, {MAX_AREA}], got {v:g}")
    if v > MAX_AREA:
        if 1 < v <= 100 * MAX_AREA:
            raise ValueError(f"{name}: {v:g} is not a fraction of the image; did you mean "
                             f"{v / 100:g} ({v:g} %)? (expected (0, {MAX_AREA}])")
        raise ValueError(f"{name}: expected a fraction in (0, {MAX_AREA}], got {v:g}: a patch over "
                         f"half the image is no longer a patch attack")
    return v


def check_target_text(target) -> Optional[object]:
    """``None``, an index ``>= 0`` or a class name (resolved later against the model's classes)."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError(f"--target: expected a class name or index, got {target!r}")
    if isinstance(target, int):
        text = str(target)
    elif isinstance(target, str):
        text = target.strip()
    else:
        raise TypeError(f"--target: expected a class name or index, got {type(target).__name__}")
    if re.fullmatch(r"[+-]?\d+", text):
        k = int(text)
        if k < 0:
            raise ValueError(f"--target: expected a class index >= 0 or a class name, got {text}")
        return k
    if not text:
        raise ValueError("--target: expected a class name or index, got an empty string")
    return text


def _folded(names: Sequence[str]) -> Dict[str, List[int]]:
    from ._registry import normalize_name
    out: Dict[str, List[int]] = {}
    for i, n in enumerate(names):
        out.setdefault(normalize_name(n), []).append(i)
    return out


def resolve_target(target, class_names: Sequence[str], model: str) -> Optional[int]:
    """The class index ``target`` (from :func:`check_target_text`) names among ``class_names``."""
    from ._registry import close_matches, normalize_name
    target = check_target_text(target)
    if target is None:
        return None
    k = len(class_names)
    if isinstance(target, int):
        if target >= k:
            raise ValueError(f"--target: expected a class index in [0, {k}) for {model!r}, got {target}")
        return target
    hits = _folded(class_names).get(normalize_name(target), [])
    if len(hits) > 1:
        raise LookupError(f"--target: {target!r} names several classes of {model!r} (indices "
                          f"{', '.join(map(str, hits))}); pass the index")
    if not hits:
        near = close_matches(target, class_names, n=5)
        raise LookupError(f"--target: {model!r} has no class {target!r}"
                          + (f"; did you mean {', '.join(map(repr, near))}?" if near else "")
                          + f" (or give a class index in [0, {k}))")
    return hits[0]


def map_folders(folders: Sequence[str], class_names: Sequence[str]) -> Dict[str, dict]:
    """``{folder: {"class": index or None, "name", "how": "name" | "index" | "ambiguous" |
    "unmatched", "close": [...]}}``: each class sub-folder's label (module doc)."""
    from ._registry import close_matches, normalize_name
    table, out = _folded(class_names), {}
    for f in folders:
        hits = table.get(normalize_name(f), [])
        if len(hits) == 1:
            out[f] = {"class": hits[0], "name": class_names[hits[0]], "how": "name"}
        elif len(hits) > 1:
            out[f] = {"class": None, "name": None, "how": "ambiguous", "close": [class_names[i] for i in hits]}
        elif re.fullmatch(r"\d+", f) and int(f) < len(class_names):
            out[f] = {"class": int(f), "name": class_names[int(f)], "how": "index"}
        else:
            out[f] = {"class": None, "name": None, "how": "unmatched",
                      "close": close_matches(f, class_names, n=3)}
    return out


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


def attack_options(atk) -> dict:
    """Every constructor option of ``atk`` with its value (for results.json)."""
    from .bench.report import _jsonable
    params = inspect.signature(type(atk).__init__).parameters
    out = {}
    for k in params:
        if k != "self" and hasattr(atk, k):
            v = _jsonable(getattr(atk, k))
            out[k] = v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else repr(v)
    return out


def _zoo_class_names(model: str) -> Optional[list]:
    """The class names of a zoo model without building it (``None`` for other specs)."""
    if ":" in model:
        return None
    from .models import zoo
    spec = zoo.get_spec(model)
    try:
        return list(spec.preprocess(**spec.defaults)[4])
    except Exception:  # noqa: BLE001 - a builder that needs options: resolve after loading
        return None


def _scan(images):
    from .data.folders import scan_images
    try:
        return scan_images(images)
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise _flag_error("--images", e) from None


def _warn_skipped(skipped: List[Tuple[Path, str]], root: Optional[Path]) -> None:
    if not skipped:
        return
    def rel(p):
        try:
            return str(p.relative_to(root)) if root is not None and root.is_dir() else str(p)
        except ValueError:
            return str(p)
    listing = "; ".join(f"{rel(p)} ({why})" for p, why in skipped)
    warnings.warn(f"skipped {len(skipped)} file(s) of --images that are not readable images: "
                  f"{listing}", SkippedFilesWarning, stacklevel=3)


def _check_print_size(v) -> float:
    from ._validation import check_number
    return check_number(v, "--print-size-cm", 0.0, 100.0, low_inclusive=False)


def run_attack_command(model: str, attack: str, area: float, shape: str, images, out,
                       steps: Optional[int] = None, target=None, seed: int = 0, device: str = "cpu",
                       overwrite: bool = False, print_size_cm: float = 5.0,
                       argv: Optional[List[str]] = None) -> Path:
    """Attack ``model`` on the photos of ``images`` and write the run folder ``out`` (see
    :mod:`patchbench.attack_outputs`); returns the report's path. Every argument is checked, the
    image folder listed and the run folder rule applied before the model is loaded."""
    from . import models
    from ._validation import check_bool, check_device, check_path, check_seed
    from .attack_outputs import check_out_dir
    from .patches import Threat

    device = check_device(device, "--device")
    seed = check_seed(seed, "--seed")
    area = check_area(area, "--area")
    print_size_cm = _check_print_size(print_size_cm)
    overwrite = check_bool(overwrite, "--overwrite")
    out_dir = check_path(out, "--out", kind="dir", must_exist=False)
    previous = check_out_dir(out_dir, overwrite)
    target = check_target_text(target)
    try:
        threat = Threat(area=area, shape=shape, placement="random")
    except (ValueError, TypeError, LookupError) as e:
        raise _flag_error("--shape", e) from None
    atk = build_attack(attack, steps)
    try:
        model = models.check_spec(model)
        names = _zoo_class_names(model)
    except (LookupError, TypeError, ValueError, FileNotFoundError) as e:
        raise _flag_error("--model", e) from None
    if names is not None:
        resolve_target(target, names, model)
    scan = _scan(images)
    try:
        net = models.load(model, device=device)
    except (LookupError, TypeError, ValueError, FileNotFoundError) as e:
        raise _flag_error("--model", e) from None
    target = resolve_target(target, net.class_names, model)
    from .attack_run import run_and_write
    return run_and_write(net, model, atk, attack, threat, scan, out_dir, previous, target=target,
                         seed=seed, device=device, print_size_cm=print_size_cm, argv=argv,
                         params={"model": model, "attack": attack, "area": area, "shape": shape,
                                 "images": str(Path(images).resolve()) if isinstance(images, (str, Path)) else images,
                                 "out": str(out_dir), "steps": steps, "seed": seed,
                                 "device": str(device), "overwrite": overwrite,
                                 "print_size_cm": print_size_cm})
