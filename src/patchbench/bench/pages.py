"""HTML reports rebuilt from results stores: ``patchbench report DIR [DIR ...] [--out DIR] [--open]``.

One self-contained page per run (``DIR/index.html``): a headline box first (the page's key numbers,
:mod:`patchbench.bench.views._headline`, then what was run, how many cells are done or failed, wall
and compute time), each task's tables and plots in its paper's layout (a view
module per task, :mod:`patchbench.bench.views`), the galleries the runner kept
(``DIR/gallery/<key>.pt``) and the failed cells with their tracebacks. Given several runs, a
comparison page puts the cells they share side by side, with deltas.

The page stays under :data:`PAGE_BUDGET` characters (~1 MB): the galleries get what the tables,
plots and the views' own pictures left, at most :data:`GALLERY_BUDGET`. The report reads the stores
read-only and writes only ``index.html`` files.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import views
from .report import Report
from .store import DB_NAME, CellRecord, ResultsStore
from .._registry import normalize_name
from .views._common import (ATTACK_ORDER, DEFENSE_ORDER, CellNamer, canonical, esc,
                            order_key)
from .views._compare import render_comparison
from .views._gallery import gallery_html, gallery_path, load_gallery
from .views._headline import headline_items

#: bytes of gallery images one page embeds at most (the rest are listed as not shown)
GALLERY_BUDGET = 600_000
#: characters a run's page may reach (its images are base64 text): a report stays under 1 MB
PAGE_BUDGET = 960_000
_RESERVE = 40_000           # the failed-cells listing and the page's frame


def _check_dirs(run_dirs, arg: str) -> List[Path]:
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    try:
        items = list(run_dirs)
    except TypeError:
        raise TypeError(f"{arg}: expected a run directory or a list of them, got "
                        f"{type(run_dirs).__name__}") from None
    if not items:
        raise ValueError(f"{arg}: expected at least one run directory, got none")
    dirs, seen = [], {}
    for i, d in enumerate(items):
        if not isinstance(d, (str, os.PathLike)) or (isinstance(d, str) and not d.strip()):
            raise TypeError(f"{arg}: expected paths of run directories, got {d!r} at position {i}")
        p = Path(d)
        if not p.exists():
            raise FileNotFoundError(f"{arg}: run directory {str(p)!r} does not exist")
        if not p.is_dir():
            raise ValueError(f"{arg}: {str(p)!r} is a file, expected a run directory")
        if not (p / DB_NAME).is_file():
            raise FileNotFoundError(f"{arg}: {str(p)!r} has no results store ({DB_NAME}); expected "
                                    f"a folder written by `patchbench run`")
        real = p.resolve()
        if real in seen:
            raise ValueError(f"{arg}: {str(p)!r} is given twice (also as {seen[real]!r})")
        seen[real] = str(p)
        dirs.append(p)
    return dirs


def _check_out(out_dir, arg: str) -> Optional[Path]:
    if out_dir is None:
        return None
    if not isinstance(out_dir, (str, os.PathLike)) or (isinstance(out_dir, str)
                                                       and not out_dir.strip()):
        raise TypeError(f"{arg}: expected a folder path, got {out_dir!r}")
    p = Path(out_dir)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{arg}: {str(p)!r} is an existing file, expected a folder")
    return p


def _load(run_dir: Path) -> List[CellRecord]:
    with ResultsStore(run_dir, readonly=True) as store:
        return store.records()


def build_report(run_dirs, out_dir=None) -> Path:
    """Rebuild the HTML report of one run, or of several with a comparison page.

    Args:
        run_dirs: a run directory (holding ``results.db``) or a list of them.
        out_dir: where to write. One run: ``out_dir/index.html`` (default: the run directory).
            Several: the comparison page ``out_dir/index.html`` and each run's page
            ``out_dir/<run folder name>/index.html`` (default ``out_dir``: a ``comparison`` folder
            next to the first run); the run directories are left untouched.

    Returns: the path of the written ``index.html`` (the comparison page when several).

    Raises:
        FileNotFoundError: a directory does not exist or has no ``results.db``.
        ValueError: a store of another schema, a file given as a directory, a directory twice.
    """
    return _build(run_dirs, out_dir, "run_dirs", "out_dir")


def _build(run_dirs, out_dir, arg: str, out_arg: str) -> Path:
    dirs = _check_dirs(run_dirs, arg)
    out = _check_out(out_dir, out_arg)
    records = [_load(d) for d in dirs]          # every store is opened before anything is written
    if len(dirs) == 1:
        return run_page(dirs[0], records[0]).save(out if out is not None else dirs[0])
    out = out if out is not None else dirs[0].parent / "comparison"
    labels = _labels(dirs)
    runs = []
    for d, recs, label in zip(dirs, records, labels):
        run_page(d, recs).save(out / label)
        runs.append((label, f"{label}/index.html", str(d), recs))
    page = Report(f"Comparison of {len(dirs)} runs: {', '.join(labels)}")
    render_comparison(page, runs, CellNamer(r.config for recs in records for r in recs))
    return page.save(out)


def _labels(dirs: Sequence[Path]) -> List[str]:
    out: List[str] = []
    for d in dirs:
        base = d.resolve().name or "run"
        label, i = base, 2
        while label in out or label == "comparison":
            label, i = f"{base}-{i}", i + 1
        out.append(label)
    return out


# ---- one run's page -----------------------------------------------------------------------------
def run_page(run_dir: Path, records: List[CellRecord]) -> Report:
    """The report of one run: headline, task views, galleries, failed cells."""
    namer = CellNamer(r.config for r in records)
    exps = _distinct(r.config.get("experiment") for r in records)
    rep = Report(f"{', '.join(exps) or Path(run_dir).name} — patchbench report")
    _headline(rep, run_dir, records, namer)
    if not records:
        rep.paragraph("The store holds no cell yet.", "note")
        return rep
    views.render(rep, records, namer, run_dir)
    owned = views.owned_galleries(records)
    _galleries(rep, run_dir, [r for r in records if r.key not in owned], namer)
    _failed(rep, records, namer)
    return rep


def _distinct(values) -> List[str]:
    out: List[str] = []
    for v in values:
        if v not in (None, "") and str(v) not in out:
            out.append(str(v))
    return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _headline(rep: Report, run_dir: Path, records: List[CellRecord], namer: CellNamer) -> None:
    """The box at the top: the key numbers of the page's views, then what ran."""
    try:
        lines = headline_items(records, namer, run_dir)
    except Exception as e:  # noqa: BLE001 - a headline bug must not cost the whole page
        lines = [("", esc(f"(the key numbers could not be computed: {type(e).__name__}: {e})"))]
    if lines:
        rep.headline(lines, escape=False)
    cfgs = [r.config for r in records]
    done = sum(r.status == "done" for r in records)
    failed = len(records) - done
    items: List[Tuple[str, str]] = []
    order = {"attack": ATTACK_ORDER, "defense": DEFENSE_ORDER}
    for title, field in (("Experiment", "experiment"), ("Task", "task"), ("Models", "model"),
                         ("Datasets", "dataset"), ("Attacks", "attack"), ("Defenses", "defense")):
        vals = _distinct(c.get(field) for c in cfgs)
        if field in order:
            vals.sort(key=lambda v: order_key(normalize_name(v), order[field]))
        if vals:
            items.append((title, esc(", ".join(vals))))
    areas = sorted({c["patch_area"] for c in cfgs if isinstance(c.get("patch_area"), (int, float))})
    if areas:
        items.append(("Patch areas", esc(", ".join(f"{100 * a:g}%" for a in areas))))
    cells = f"<b>{done}</b> done"
    cells += (f", <a class='bad' href='#failed'><b>{failed}</b> failed</a> (listed at the end)"
              if failed else ", none failed")
    items.append(("Cells", cells))
    if records:
        compute = sum(r.seconds for r in records)
        starts = [r.started for r in records if r.started > 0]
        ends = [r.finished for r in records if r.finished > 0]
        text = f"{_duration(compute)} compute (Σ of the cells' own time)"
        if starts and ends:
            text += (f"; {_duration(max(ends) - min(starts))} wall, first cell start → last cell "
                     f"end, finished {time.strftime('%Y-%m-%d %H:%M', time.localtime(max(ends)))}")
        items.append(("Time", text))
    versions = _distinct(r.version for r in records)
    items.append(("Store", f"<code>{esc(Path(run_dir) / DB_NAME)}</code>"
                           + (f"; patchbench {esc(', '.join(versions))}" if versions else "")))
    if not lines:
        rep.headline_html("<h2>Run</h2>")
    rep.headline_html("<dl class='headline'>" + "".join(f"<dt>{t}</dt><dd>{v}</dd>"
                                                        for t, v in items) + "</dl>")


def _galleries(rep: Report, run_dir: Path, records: List[CellRecord], namer: CellNamer) -> None:
    found = sorted(((r, p) for r in records if r.status == "done"
                    for p in [gallery_path(run_dir, r.key)] if p is not None),
                   key=lambda rp: namer.sort_key(rp[0].config))
    groups: Dict[str, dict] = {}
    problems = []
    for rec, path in found:
        try:
            g = load_gallery(path)
        except ValueError as e:
            problems.append(str(e))
            continue
        # cells showing the same images: everything but the defense
        cfg = {k: v for k, v in rec.config.items() if k not in ("defense", "defense_options",
                                                                "artifacts", "labels")}
        cfg["defense"] = "none"
        key = canonical(cfg) + repr((tuple(g["clean"].shape), hash(g["clean"].numpy().tobytes())))
        grp = groups.setdefault(key, {"title": namer.describe(cfg).rsplit(" · vs ", 1)[0]
                                      + (f" · seed {cfg['seed']}" if cfg.get("seed") is not None
                                         else ""),
                                      "entries": [], "attacked": "adv" in g})
        grp["entries"].append((namer.variant(rec.config, "defense"), g))
    shown = [g for g in groups.values() if g["attacked"]] or list(groups.values())[:1]
    if not shown and not problems:
        return
    rep.heading("Galleries")
    rep.paragraph("The first images of each attack: clean, patched (with the undefended model's "
                  "prediction and its confidence where the run kept it), the patch mask (its share "
                  "of the image), and each defense's purified image (with the model's prediction "
                  "on it); ✓ = the true label. A DO attack's patched image is the same "
                  "for every defense; an adaptive attacker's is not.", "note")
    budget = max(0, min(GALLERY_BUDGET, PAGE_BUDGET - _RESERVE - rep.size()))
    skipped = 0
    for grp in shown:
        html, size = gallery_html(grp["entries"], grp["title"], budget)
        if not html:
            skipped += 1
            continue
        budget -= size
        rep.raw_html(html)
    if skipped:
        rep.paragraph(f"{skipped} more galleries not shown: the page keeps its images under "
                      f"{GALLERY_BUDGET // 1000} kB and itself under {PAGE_BUDGET // 1000} kB "
                      f"(they are in {Path(run_dir) / 'gallery'}).", "note")
    for p in problems:
        rep.paragraph(p, "bad")


def _last_line(error: Optional[str]) -> str:
    lines = [ln.strip() for ln in (error or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no error text)"


def _failed(rep: Report, records: List[CellRecord], namer: CellNamer) -> None:
    failed = sorted((r for r in records if r.status != "done"), key=lambda r: namer.sort_key(r.config))
    rep.raw_html(f"<h2 id='failed'>Failed cells ({len(failed)})</h2>")
    if not failed:
        rep.paragraph("None.", "note")
        return
    cols = list(namer.columns(failed[0].config))
    out = ["<p class='note'>A rerun of the same command retries them.</p><table><tr>"
           + "".join(f"<th class='t'>{esc(c)}</th>" for c in cols) + "<th class='t'>error</th></tr>"]
    for r in failed:
        cells = "".join(f"<td class='t'>{esc(v)}</td>" for v in namer.columns(r.config).values())
        out.append(f"<tr>{cells}<td class='t'><code class='bad'>{esc(_last_line(r.error))}</code>"
                   f"<details><summary>traceback · key {esc(r.key)}</summary>"
                   f"<pre>{esc(r.error or '')}</pre></details></td></tr>")
    out.append("</table>")
    rep.raw_html("".join(out))


# ---- command line -------------------------------------------------------------------------------
def main_report(argv: Optional[Sequence[str]] = None) -> int:
    """``patchbench report DIR [DIR ...] [--out DIR] [--open]``; returns the exit code (2 and a
    one-line message for a user error)."""
    from ..cli import ArgumentParser
    from .store import StoreError

    p = ArgumentParser(prog="patchbench report",
                       description="Rebuild DIR/index.html from DIR/results.db; several DIRs also "
                                   "get a comparison page (in --out, default DIR/../comparison).")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders (each with results.db)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write (default: the run folder, or a comparison folder)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    a = p.parse_args(list(argv) if argv is not None else None)
    try:
        path = _build(a.dirs, a.out, "DIR", "--out")
    except (StoreError, ValueError, TypeError, LookupError, FileNotFoundError) as e:
        p.error(" ".join(str(e).split()))
    print(f"report: {path}")
    if a.open:
        import webbrowser
        webbrowser.open(path.resolve().as_uri())
    return 0


__all__ = ["build_report", "run_page", "main_report", "GALLERY_BUDGET", "PAGE_BUDGET"]
