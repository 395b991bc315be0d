"""Evaluating defensive patches: accuracy with the patch vs without vs control patches, under common
corruptions and adversarial noise, on the models the patch was trained on and on held-out models.

The claim to test (Wang et al. CVPR 2022, abstract): defensive patches improve accuracy by 20+ points
on average for both corruption and adversarial robustness, and transfer across models. The setting
is the defender's (``defensive-patch-notes.md``): the patch of the object's true class is stuck on
it *before* the noise, so a corruption degrades the patch too, and the adversary perturbs the
patched image — the patch included — with FGSM (Goodfellow et al. 2015) or PGD-L∞ (Madry et al. 2018,
Eq. 2; white-box against the evaluated model). Two controls use the same mask: "random" (uniform
noise, one pattern per class) separates "a class-specific pattern helps" from "a sticker changes
things"; "blank" (the mask filled with black) is what hiding those pixels alone costs — where the
placement covers part of the object (Fashion-MNIST's objects reach the image edge), even a perfectly
sticker-tolerant model loses that much with any patch that carries no class information.

Rows (one per model × patch × noise × severity): ``model``, ``held_out``, ``patch`` ("none" |
"defensive" | "random" | "blank"), ``noise`` (a corruption name, "clean", "fgsm" or "pgd"), ``family``,
``severity`` (1–5, or ε for adversarial noise, 0 for clean), ``n``, ``acc``, ``lo``, ``hi`` (95 %
Wilson interval).

Example::

    rows = evaluate_defensive_patch({"small": m1, "resnet": m3}, x, y, patch, held_out={"resnet"})
    summary = summarize(rows)
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._config import name_list
from .._validation import (check_bool, check_images, check_int, check_labels, check_number,
                           check_positive_int, check_seed)
from ..corruptions import CORRUPTIONS, MAX_SEVERITY, corrupt, family
from ..metrics.classification import Rate
from .apply import DefensivePatch, apply_defensive_patch, blank_patch_like, random_patch_like

EPSILONS = (2 / 255, 4 / 255, 8 / 255)
PATCHES = ("none", "defensive", "random", "blank")


def _row(model_name, held_out, patch, noise, severity, r: Rate) -> dict:
    """One result row from the cell's accuracy ``r`` (a :class:`Rate`)."""
    fam = "clean" if noise == "clean" else ("adversarial" if noise in ("fgsm", "pgd") else family(noise))
    return {"model": model_name, "held_out": bool(held_out), "patch": patch, "noise": noise,
            "family": fam, "severity": severity, "n": r.n, "acc": r.value, "lo": r.lo, "hi": r.hi}


def patched_variants(x: Tensor, y: Tensor, patch: DefensivePatch, seed: int = 0) -> Dict[str, Tensor]:
    """``{"none": x, "defensive": x with its class patch, "random": x with the random control,
    "blank": x with the mask blacked out}``."""
    if not isinstance(patch, DefensivePatch):
        raise TypeError(f"patch: expected a DefensivePatch, got {type(patch).__name__}")
    seed = check_seed(seed, "seed")
    control = random_patch_like(patch, generator=seed + 1)
    return {"none": x, "defensive": apply_defensive_patch(x, y, patch),
            "random": apply_defensive_patch(x, y, control),
            "blank": apply_defensive_patch(x, y, blank_patch_like(patch))}


def adversarial_images(model, x: Tensor, y: Tensor, attack: str, eps: float, steps: int = 10,
                       seed: int = 0) -> Tensor:
    """FGSM (one step of size ε, no random start) or PGD-L∞ (``steps`` steps of ε/4 from a random
    start) over the *whole* image — patch included — against ``model`` (white-box)."""
    if attack not in ("fgsm", "pgd"):
        raise LookupError(f"attack: expected 'fgsm' or 'pgd', got {attack!r}")
    x = check_images(x, "x")
    eps = check_number(eps, "eps", 0.0, 1.0, low_inclusive=False)
    steps, seed = check_positive_int(steps, "steps"), check_seed(seed, "seed")
    return _noise_attack(attack, eps, steps).run(model, x, y, _full_mask(x), generator=seed).x_adv


def _full_mask(x: Tensor) -> Tensor:
    """The whole image as the attacker's region (``1×1×H×W`` of ones)."""
    return torch.ones(1, 1, *x.shape[-2:], device=x.device)


def _noise_attack(attack: str, eps: float, steps: int):
    """FGSM (one ε step from the image) or PGD-L∞ (``steps`` ε/4 steps from a random start):
    the registered whole-image attacks ``fgsm`` / ``pgd-linf`` (:mod:`patchbench.attacks.noise`)."""
    from ..attacks.noise import FGSM, PGDLinf
    if attack == "fgsm":
        return FGSM(eps=eps)
    if attack == "pgd":
        return PGDLinf(eps=eps, steps=steps)
    raise LookupError(f"adversarial noise: expected 'fgsm' or 'pgd', got {attack!r}")


def evaluate_defensive_patch(models: Dict[str, object], x: Tensor, y, patch: DefensivePatch, *,
                             held_out: Iterable[str] = (), corruptions: Sequence[str] = CORRUPTIONS,
                             severities: Sequence[int] = (1, 2, 3, 4, 5),
                             epsilons: Sequence[float] = EPSILONS, pgd_steps: int = 10,
                             n_adv: Optional[int] = None, batch_size: int = 250, seed: int = 0,
                             progress: bool = True) -> List[dict]:
    """Accuracy of every model on ``x`` without / with the defensive / with the random and the blank
    control patch, clean, under each corruption × severity and under FGSM / PGD-L∞ at each ε.

    Args:
        models: name → classifier (``N×C×H×W`` in [0, 1] → logits); all must match ``patch``'s classes.
        x: ``N×C×H×W`` test images in [0, 1]; y: ``N`` true labels (they pick the patch).
        patch: the :class:`DefensivePatch` under test.
        held_out: names of models the patch was *not* trained on.
        corruptions: corruption names (default all of :data:`patchbench.corruptions.CORRUPTIONS`).
        severities: default 1–5. epsilons: L∞ budgets (default 2/255, 4/255, 8/255; empty = none).
        pgd_steps: PGD iterations (default 10). n_adv: attack only the first ``n_adv`` images (default
            all; attacks cost ``pgd_steps`` forward+backward passes each).
        batch_size: images per attack/predict batch (default 250).
        seed: corruption and attack seed (default 0). progress: tqdm bar (default True).

    Returns:
        A list of row dicts (see the module doc). Each accuracy is one evaluation cell
        (:func:`patchbench.evaluate`); the adversarial ones attack ``batch_size`` images per cell,
        each with the seed ``seed``.
    """
    if not isinstance(patch, DefensivePatch):
        raise TypeError(f"patch: expected a DefensivePatch, got {type(patch).__name__}")
    if not isinstance(models, dict) or not models or not all(
            isinstance(k, str) and callable(m) for k, m in models.items()):
        raise TypeError(f"models: expected a non-empty dict name → classifier, got {models!r}")
    x = check_images(x, "evaluate_defensive_patch: x")
    y = check_labels(y, x.shape[0], len(patch.classes), name="evaluate_defensive_patch: y").to(x.device)
    if tuple(x.shape[1:]) != (patch.channels, *patch.image_hw):
        raise ValueError(f"evaluate_defensive_patch: x: the patch is for {patch.channels}×"
                         f"{patch.image_hw[0]}×{patch.image_hw[1]} images, got {tuple(x.shape[1:])}")
    for m in models.values():
        patch.check_model(m)
    corruptions = name_list(corruptions, "corruptions", CORRUPTIONS, allow_empty=True)
    severities = _numbers(severities, "severities",
                          lambda v: check_int(v, "severities", 1, MAX_SEVERITY))
    epsilons = _numbers(epsilons, "epsilons",
                        lambda v: check_number(v, "epsilons", 0.0, 1.0, low_inclusive=False))
    pgd_steps, batch_size = check_positive_int(pgd_steps, "pgd_steps"), check_positive_int(batch_size,
                                                                                        "batch_size")
    if n_adv is not None:
        n_adv = check_positive_int(n_adv, "n_adv")
    seed, progress = check_seed(seed, "seed"), check_bool(progress, "progress")
    if isinstance(held_out, str):
        held_out = (held_out,)
    held = set(held_out)
    unknown = held - set(models)
    if unknown:
        raise ValueError(f"held_out names {sorted(unknown)} are not among the models {sorted(models)}")
    variants = patched_variants(x, y, patch, seed)
    rows: List[dict] = []
    total = len(PATCHES) * (1 + len(corruptions) * len(severities)) + \
        len(PATCHES) * len(models) * 2 * len(epsilons)
    bar = tqdm(total=total, desc="defensive patch eval", disable=not progress, leave=False)

    from ..evaluation import evaluate

    def score(xs, kind, noise, sev):
        for name in models:
            ev = evaluate(models[name], xs, y, batch_size=batch_size)
            rows.append(_row(name, name in held, kind, noise, sev, ev.clean))

    def attacked(model, xa, ya, attack, eps) -> Rate:
        """Accuracy under FGSM / PGD, one cell per ``batch_size`` images (seed ``seed`` each)."""
        atk = _noise_attack(attack, eps, pgd_steps)
        k = n = 0
        for i in range(0, len(xa), batch_size):
            xb, yb = xa[i:i + batch_size], ya[i:i + batch_size]
            r = evaluate(model, xb, yb, atk, None, _full_mask(xb), generator=seed,
                         batch_size=batch_size).robust
            k, n = k + r.k, n + r.n
        return Rate.of(k, n)

    for kind, xv in variants.items():
        score(xv, kind, "clean", 0)
        bar.update(1)
        for c in corruptions:
            for s in severities:
                score(corrupt(xv, c, int(s), generator=seed), kind, c, int(s))
                bar.update(1)
        xa, ya = xv[:n_adv], y[:n_adv]
        for name, model in models.items():
            for attack in ("fgsm", "pgd"):
                for eps in epsilons:
                    rows.append(_row(name, name in held, kind, attack, round(float(eps), 6),
                                     attacked(model, xa, ya, attack, float(eps))))
                    bar.update(1)
    bar.close()
    return rows


def _numbers(values, name: str, check) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, range)):
        raise TypeError(f"{name}: expected a list of numbers, got {values!r}")
    return tuple(check(v) for v in values)


def _mean(vals: List[float]) -> float:
    return sum(vals) / len(vals) if vals else float("nan")


def summarize(rows: Sequence[dict], severities: Sequence[int] = (3, 4, 5),
              pgd_eps: float = 4 / 255) -> List[dict]:
    """Per model: clean accuracy, mean corruption accuracy at ``severities`` (default 3–5, over all
    corruptions) and PGD accuracy at ``pgd_eps``, for each patch, plus the gains of the defensive,
    random and blank patches over no patch (in accuracy points ×100)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        s = {"model": model, "held_out": mine[0]["held_out"]}
        for kind in PATCHES:
            k = [r for r in mine if r["patch"] == kind]
            s[f"clean_{kind}"] = _mean([r["acc"] for r in k if r["noise"] == "clean"])
            s[f"corr_{kind}"] = _mean([r["acc"] for r in k if r["family"] not in ("clean", "adversarial")
                                       and r["severity"] in severities])
            s[f"pgd_{kind}"] = _mean([r["acc"] for r in k if r["noise"] == "pgd"
                                      and abs(r["severity"] - pgd_eps) < 1e-6])
        for kind in PATCHES[1:]:
            for what in ("corr", "pgd"):
                s[f"{what}_gain_{kind}"] = 100 * (s[f"{what}_{kind}"] - s[f"{what}_none"])
        out.append(s)
    return out


def family_table(rows: Sequence[dict], fam: str, severities: Sequence = (1, 2, 3, 4, 5)) -> List[dict]:
    """Mean accuracy over the corruptions of ``fam`` (or over FGSM/PGD for "adversarial", with ε as
    the columns), one row per model × patch × (attack) and one column per severity."""
    out = []
    keys = dict.fromkeys((r["model"], r["held_out"], r["patch"], r["noise"] if fam == "adversarial"
                          else fam) for r in rows if r["family"] == fam)
    for model, held, kind, noise in keys:
        row = {"model": model, "held out": "yes" if held else "no", "patch": kind, "noise": noise}
        for s in severities:
            vals = [r["acc"] for r in rows if r["model"] == model and r["patch"] == kind and
                    r["family"] == fam and abs(r["severity"] - s) < 1e-6 and
                    (fam != "adversarial" or r["noise"] == noise)]
            row[f"{s * 255:.0f}/255" if fam == "adversarial" else f"sev {s}"] = _mean(vals)
        out.append(row)
    return out


def severity_plot(rows: Sequence[dict], title: str = ""):
    """Matplotlib figure: accuracy vs corruption severity (mean over corruptions), one line per
    model × patch (solid: defensive, dashed: none, dotted: random, dash-dot: blank)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"defensive": "-", "none": "--", "random": ":", "blank": "-."}
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, model in enumerate(models):
        for kind, ls in styles.items():
            pts = []
            for s in range(0, 6):
                fam_ok = (lambda r: r["noise"] == "clean") if s == 0 else \
                    (lambda r: r["family"] not in ("clean", "adversarial") and r["severity"] == s)
                vals = [r["acc"] for r in rows if r["model"] == model and r["patch"] == kind and fam_ok(r)]
                pts.append(_mean(vals))
            held = " (held out)" if any(r["held_out"] for r in rows if r["model"] == model) else ""
            ax.plot(range(6), pts, ls, color=colors[i % len(colors)], marker="o", ms=3,
                    label=f"{model}{held}: {kind}")
    ax.set_xlabel("corruption severity (0 = clean)")
    ax.set_ylabel("accuracy (mean over corruptions)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def gallery_items(x: Tensor, y: Tensor, patch: DefensivePatch, corruption: str = "gaussian_noise",
                  severity: int = 3, n: int = 4, seed: int = 0, class_names: Optional[Sequence[str]] = None):
    """Report gallery: for ``n`` images, clean / patched / corrupted / corrupted+patched / control."""
    from ..bench.report import GalleryItem

    x, y = x[:n], y[:n]
    v = patched_variants(x, y, patch, seed)
    items = []
    for i in range(len(x)):
        name = class_names[int(y[i])] if class_names else str(int(y[i]))
        for kind, xs, tag in (("none", v["none"], "clean"), ("defensive", v["defensive"], "patched"),
                              ("none", corrupt(v["none"][i:i + 1], corruption, severity, seed), corruption),
                              ("defensive", corrupt(v["defensive"][i:i + 1], corruption, severity, seed),
                               f"patched + {corruption}"),
                              ("random", corrupt(v["random"][i:i + 1], corruption, severity, seed),
                               f"random patch + {corruption}")):
            img = xs[i] if xs.shape[0] == len(x) else xs[0]
            items.append(GalleryItem(img, f"{name}: {tag}" + (f" (sev {severity})" if tag != "clean"
                                                              and tag != "patched" else "")))
    return items
