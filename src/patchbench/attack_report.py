"""``index.html`` of a ``patchbench attack`` run: the headline, what each image was measured against,
the skipped files, the printable patch and a gallery (clean / patched / mask, with predictions)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def _pct(rate: dict) -> str:
    if not rate["n"]:
        return "n/a (no eligible image)"
    return f"{rate['value']:.0%} [{rate['lo']:.0%}, {rate['hi']:.0%}] ({rate['k']}/{rate['n']})"


def write_report(out_dir: Path, result: dict, x, x_adv, mask) -> Path:
    from .bench.report import GalleryItem, Report

    p, s = result["parameters"], result["summary"]
    rep = Report(f"patchbench attack: {p['attack']} on {p['model']}")
    goal = (f"reach class {result['target']['name']!r} ({result['target']['class']})"
            if result["target"] else "change the model's answer")
    rep.paragraph(f"Attack success {_pct(s['success'])}: {p['attack']} with a {p['area']:.1%} "
                  f"{p['shape']} patch tries to {goal}; counted over {s['success_over']} "
                  f"(95 % Wilson interval). Re-read from the saved full-size files: "
                  f"{_pct(s['success_saved_files'])}.")
    if s["n_labelled"]:
        rep.paragraph(f"{s['n_labelled']} image(s) carry a label from their folder name: clean "
                      f"accuracy {_pct(s['clean_accuracy_labelled'])}, under attack "
                      f"{_pct(s['robust_accuracy_labelled'])}.")
    if s["n_reference_prediction"]:
        rep.paragraph(f"{s['n_reference_prediction']} image(s) have no label (top-level files, or "
                      f"a folder that matches no class): their reference is the model's own clean "
                      f"prediction, marked 'pred' below.", "note")
    unmatched = [f for f in result["folders"] if f["class"] is None]
    for f in unmatched:
        near = f.get("close") or []
        why = ("names several classes" if f["how"] == "ambiguous" else "matches no class of the model")
        rep.paragraph(f"Folder {f['folder']!r} {why}" + (f" (close: {', '.join(near)})" if near else "")
                      + f"; its {f['images']} image(s) use the clean prediction as reference.", "note")
    if result["skipped"]:
        rep.paragraph(f"Skipped {len(result['skipped'])} file(s): " + "; ".join(
            f"{Path(r['file']).name} ({r['reason']})" for r in result["skipped"]), "note")
    if result["patch"] is not None:
        info = result["patch"]
        h_cm, w_cm = info["print_size_cm"]
        rep.heading("Printable patch")
        with Image.open(out_dir / "patch.png") as im:
            shown = im.convert("RGB")
        rep.gallery([GalleryItem(shown,
                                 f"patch.png: {h_cm:.1f} × {w_cm:.1f} cm at {info['dpi']:.0f} dpi; "
                                 f"NPS {info['nps']:.3f}")], columns=3)
    else:
        rep.paragraph("Per-image patches: patches/<image>.png, each printable at "
                      f"{p['print_size_cm']:g} cm (its NPS in results.json).", "note")
    items = []
    for i, r in enumerate(result["images"]):
        ref = r["reference"]
        tag = "" if ref["source"] == "label" else " (pred)"
        items += [GalleryItem(x[i], f"{r['file']}: reference {ref['name']}{tag}; clean "
                                    f"{r['clean']['name']} {r['clean']['confidence']:.2f}"),
                  GalleryItem(x_adv[i], f"patched: {r['adversarial']['name']} "
                                        f"{r['adversarial']['confidence']:.2f}"
                                        + (" ✓" if r["success"] else "")),
                  GalleryItem(mask[i].expand_as(x[i]) if x.shape[1] == 3 else mask[i], "mask")]
    rep.heading("Images")
    rep.gallery(items, columns=3, max_side=256)
    return rep.save(out_dir)
