"""The work of ``patchbench attack`` once its arguments are checked (:mod:`patchbench.attack_cli`):
read the photos, set each one's reference, run the attack as one :func:`patchbench.evaluate` cell,
and write the run folder (:mod:`patchbench.attack_outputs`: files, results.json, index.html)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch

from .attack_outputs import (MANIFEST, TOOL, original_size, per_image_patch, remove_previous,
                             save_printable_patch, unique_stems, versions)


def _probs(net, x, batch_size: int = 64):
    with torch.no_grad():
        return torch.cat([net(x[i:i + batch_size]).softmax(-1) for i in range(0, len(x), batch_size)])


def _answer(probs, i: int, names, ref: Optional[int] = None) -> dict:
    c = int(probs[i].argmax())
    out = {"class": c, "name": names[c], "confidence": round(float(probs[i, c]), 6)}
    if ref is not None:
        out["reference_confidence"] = round(float(probs[i, ref]), 6)
    return out


def _read(scan, size, mode, device):
    from .attack_cli import _warn_skipped
    from .data.folders import read_images_tolerant

    paths = [p for p, _ in scan.samples]
    imgs, kept, failed = read_images_tolerant(paths, size, mode)
    skipped = scan.skipped + failed
    if not imgs:
        raise ValueError(f"--images: none of the {len(paths)} image file(s) could be decoded "
                         f"(e.g. {failed[0][0]}: {failed[0][1]})")
    _warn_skipped(skipped, scan.root)
    return torch.stack(imgs).to(device), [scan.samples[i] for i in kept], skipped


def _references(net, x, samples, fmap):
    pred, _ = net.predict(x)
    label = [fmap[f]["class"] if f is not None else None for _, f in samples]
    y = torch.tensor([lbl if lbl is not None else int(p) for lbl, p in zip(label, pred.tolist())],
                     device=x.device)
    return y, pred, ["label" if lbl is not None else "prediction" for lbl in label]


def _drop_target(target, x, y, pred, samples, source):
    """Images whose reference or clean prediction already is the target cannot be attacked."""
    keep = (y != target) & (pred != target)
    if not bool(keep.any()):
        raise ValueError(f"--target: every image already has class {target} as its reference or "
                         f"its clean prediction; there is nothing to attack")
    dropped = [str(p) for (p, _), k in zip(samples, keep.tolist()) if not k]
    if dropped:
        print(f"skipping {len(dropped)} image(s) whose label or clean prediction is already the "
              f"target class {target}", flush=True)
    idx = keep.nonzero().flatten()
    keep_l = keep.tolist()
    return (x[idx], y[idx], pred[idx], [s for s, k in zip(samples, keep_l) if k],
            [s for s, k in zip(source, keep_l) if k], dropped)


def _rate(ok: List[bool]) -> dict:
    from .metrics.classification import Rate
    return Rate.of(sum(ok), len(ok)).to_dict()


def run_and_write(net, model: str, atk, attack: str, threat, scan, out_dir: Path, previous,
                  *, target: Optional[int], seed: int, device, print_size_cm: float,
                  argv: Optional[List[str]], params: dict) -> Path:
    """Run the attack and write ``out_dir``; returns ``out_dir/index.html``."""
    from .attack_cli import _flag_error, attack_options, map_folders
    from .bench.report import write_json
    from .data.folders import read_image
    from .data.transforms import _as_hw, to_pil
    from .evaluation import evaluate

    size = net.input_size or 224
    mode = "L" if net.channels == 1 else "RGB"
    try:
        threat.patch_size(_as_hw(size))
    except (ValueError, TypeError) as e:
        raise _flag_error("--area", e) from None
    x, samples, skipped = _read(scan, size, mode, device)
    names = list(net.class_names)
    folders = sorted({f for _, f in samples if f is not None})
    fmap = map_folders(folders, names)
    y, pred, source = _references(net, x, samples, fmap)
    dropped: List[str] = []
    if target is not None:
        x, y, pred, samples, source, dropped = _drop_target(target, x, y, pred, samples, source)
    tgt = None if target is None else torch.full_like(y, target)
    print(f"attacking {x.shape[0]} images with {atk!r} at {threat.area:.1%} {threat.shape} patches",
          flush=True)
    ev = evaluate(net, x, y, atk, None, threat, generator=torch.Generator().manual_seed(seed),
                  target=tgt)
    res = ev.result
    p_clean, p_adv = _probs(net, x), _probs(net, res.x_adv)

    if previous:
        remove_previous(out_dir, previous)
    paths = [p for p, _ in samples]
    stems = unique_stems(paths, scan.root)
    universal = res.patch is not None and res.patch.dim() == 3
    files = ([f"adversarial/{s}.png" for s in stems] + [f"masks/{s}.png" for s in stems]
             + [f"model_input/{s}.png" for s in stems]
             + (["patch.png"] if universal else [f"patches/{s}.png" for s in stems]) + ["index.html"])
    manifest = {"tool": TOOL, "format": 1, "complete": False, "files": files, "parameters": params}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(manifest, out_dir / MANIFEST)

    patch_info = None
    if universal:
        patch_info = save_printable_patch(res.patch, threat.shape_mask(x.shape[-2:]),
                                          out_dir / "patch.png", print_size_cm)
    rows, saved_ok = [], []
    for i, (path, folder) in enumerate(samples):
        adv_full, m_full = original_size(path, res.x_adv[i], res.mask[i], mode)
        (out_dir / "adversarial").mkdir(exist_ok=True)
        (out_dir / "masks").mkdir(exist_ok=True)
        (out_dir / "model_input").mkdir(exist_ok=True)
        to_pil(res.x_adv[i]).save(out_dir / "model_input" / f"{stems[i]}.png")   # what the model saw
        adv_file = out_dir / "adversarial" / f"{stems[i]}.png"
        to_pil(adv_full).save(adv_file)
        to_pil(m_full).save(out_dir / "masks" / f"{stems[i]}.png")
        ref = int(y[i])
        row = {"file": str(path.relative_to(scan.root)) if scan.root.is_dir() else path.name,
               "folder": folder, "original_size": list(adv_full.shape[-2:]),
               "reference": {"class": ref, "name": names[ref], "source": source[i]},
               "clean": _answer(p_clean, i, names, ref), "adversarial": _answer(p_adv, i, names, ref),
               "eligible": bool(res.eligible[i]) if res.eligible is not None else True,
               "success": bool(res.success[i]),
               "outputs": {"adversarial": f"adversarial/{stems[i]}.png", "mask": f"masks/{stems[i]}.png",
                           "model_input": f"model_input/{stems[i]}.png"}}
        if not universal:
            info = save_printable_patch(*per_image_patch(res.x_adv[i], res.mask[i]),
                                        out_dir / "patches" / f"{stems[i]}.png", print_size_cm)
            row["outputs"]["patch"] = f"patches/{stems[i]}.png"
            row["patch"] = {k: v for k, v in info.items() if k != "file"}
        # the saved full-size file, read back as the model reads any photo
        again = _probs(net, read_image(adv_file, size, mode)[None].to(device))
        row["adversarial_saved"] = _answer(again, 0, names, ref)
        ok = (row["adversarial_saved"]["class"] == target) if target is not None else \
            (row["adversarial_saved"]["class"] != ref)
        if row["eligible"]:
            saved_ok.append(ok)
        rows.append(row)

    labelled = [r for r in rows if r["reference"]["source"] == "label"]
    summary = {
        "n_images": len(rows), "n_labelled": len(labelled), "n_reference_prediction": len(rows) - len(labelled),
        "success": ev.asr.to_dict(),
        "success_over": "the eligible images: labelled ones the model classifies correctly, and those "
                        "whose reference is the model's clean prediction",
        "success_saved_files": _rate(saved_ok),
        "clean_accuracy_labelled": _rate([r["clean"]["class"] == r["reference"]["class"] for r in labelled]),
        "robust_accuracy_labelled": _rate([r["adversarial"]["class"] == r["reference"]["class"]
                                           for r in labelled]),
    }
    folder_rows = [{"folder": f, **{k: v for k, v in fmap[f].items()},
                    "images": sum(1 for _, g in samples if g == f)} for f in folders]
    result = {
        "tool": TOOL, "format": 1, "complete": True, "command": argv, "parameters": params,
        "attack_options": attack_options(atk), "seed": seed, "versions": versions(),
        "model": {"spec": model, "num_classes": net.num_classes, "input_size": net.input_size,
                  "channels": net.channels, "mean": net.normalize.mean.flatten().tolist(),
                  "std": net.normalize.std.flatten().tolist()},
        "target": None if target is None else {"class": target, "name": names[target]},
        "threat": {"area": threat.area, "shape": threat.shape, "placement": "random",
                   "patch_pixels": list(threat.patch_size(x.shape[-2:]))},
        "original_size_outputs": "attacked region pasted back: mask mapped to the original pixels "
                                 "(nearest), attacked pixels upsampled (bilinear); pixels outside "
                                 "the mask are the original photo's",
        "summary": summary, "folders": folder_rows,
        "skipped": [{"file": str(p), "reason": why} for p, why in skipped],
        "skipped_for_target": dropped, "patch": patch_info, "images": rows, "files": files,
    }
    from .attack_report import write_report
    page = write_report(out_dir, result, x, res.x_adv, res.mask)
    write_json(result, out_dir / MANIFEST)
    s = ev.asr
    print(f"success {s} over {s.n} eligible image(s); results {out_dir / MANIFEST}; report {page}",
          flush=True)
    return page
