"""What a text-image grid adds to an experiment file: text-to-image search poisoned by TTH ad images
(Hu, Chen & Li, ICASSP 2023) in the setting of PAIR's Tables 1, 3 and 4 (ACM MM 2024, §5.1–5.4),
validated on load so every mistake names its table path.

A text-image grid (``[experiment] task = "text-image"``, or ``task = "text-image"`` in one
``[[grid]]``)::

    [[grid]]
    task = "text-image"
    models   = ["dual_encoder_fmnist_scenes"]      # zoo dual encoders (kind "text-image")
    datasets = [{ name = "fmnist-scenes", split = "query", n = 300,   # the searched gallery
                  ads = { n = 10 },                 # TTH: 10 ad images per keyword
                  train = { split = "train" } }]    # the captions e_t is averaged from
    keywords = ["coat", "blue"]                     # an axis: one cell per keyword
    attacks  = ["none", { name = "tth", iterations = 300 }]
    defenses = ["none", "jpeg", { name = "pair", checkpoint = "@pair" }]
    threats  = [{}]                 # default: TTH's 0.35 side at the top-right corner
    adaptive = [false, true]
    k = 10                          # R@10 (TTH, PAIR Table 1)

* The dataset entry is the **gallery**: the first ``n`` images of ``split`` (default ``"query"``)
  from ``offset`` on, each with its five captions (:func:`patchbench.data.captions.scene_captions`);
  the queries are those captions that contain the keyword. Only ``fmnist-scenes`` has captions.
* ``ads``: ``n`` (default 10, TTH's) held-out ad images whose scenes lack the keyword
  (:func:`patchbench.data.captions.ad_images`, at the entry's ``size`` and ``seed``).
* ``train``: the attacker's caption split for the target embedding e_t (``split`` default
  ``"train"``, ``offset`` 0, ``n`` default the whole split): up to 500 of its captions with the
  keyword are averaged (TTH; :func:`patchbench.tasks.text_image.target_embedding`).
* ``keywords``: required, each one of :data:`patchbench.data.KEYWORDS` (the 23 of PAIR; all 23 are
  allowed). ``k``: default 10, at most the gallery's size.
* ``threats``: an entry's ``area`` defaults to 0.35² (TTH's patch, 0.35 of each side) and its
  ``placement`` to the top-right corner ``[1.0, 0.0]``; any ``Threat`` shape, aspect and placement
  (``"random"``: redrawn every step, EOT over placements) may be given instead. Without
  ``threats`` the grid has TTH's threat only.

Models are zoo entries of kind ``"text-image"`` (``weights``: a file path or ``"@ARTIFACT"``;
``options``: the loader's, e.g. ``input_size``). Attacks must be text-image attacks (``tth``),
defenses purifiers (a prediction-level defense has no image to embed).
"""
from __future__ import annotations

from typing import Dict, Optional

from .._validation import check_int

#: grid keys only text-image grids take
GRID_KEYS = ("keywords",)
#: retrieval (hashing) grid keys a text-image grid refuses
REFUSED_KEYS = ("targets", "purify_gallery")
#: dataset entry keys a text-image grid reads itself
DATASET_KEYS = ("ads", "train")
DATASETS = ("fmnist-scenes",)               # the datasets that have captions
DEFAULT_SPLIT = "query"
ADS_N = 10                                  # TTH: "10 advertising images for each keyword"
DEFAULT_K = 10                              # R@10 (TTH; PAIR Table 1)
#: TTH's patch: 0.35 of H and W (area 0.1225) at the top-right corner (the authors' mask)
TTH_THREAT = {"area": 0.1225, "placement": [1.0, 0.0]}     # 0.1225 = 0.35²
_TRAIN_DEFAULTS = {"split": "train", "offset": 0, "n": None}


def check_model(c, e, where: str):
    """A zoo text-image model entry (``weights``: a path or ``"@ARTIFACT"``; ``options``)."""
    from ..models import zoo
    spec = c.wrap(where, zoo.get_spec, e.name)
    if spec.kind != "text-image":
        known = ", ".join(zoo.names(kind="text-image")) or "none registered"
        c.fail(where, f"{spec.name!r} is a {spec.kind}; a text-image grid needs a text-image model "
                      f"(a dual encoder): {known}", LookupError)
    c.keys(e.options, where, {"weights", "options"})
    w = e.options.get("weights")
    if "weights" in e.options and not isinstance(w, str):
        c.fail(f"{where}.weights", f"expected a file path or '@artifact', got "
                                   f"{type(w).__name__} {w!r}", TypeError)
    if not isinstance(e.options.get("options", {}), dict):
        c.fail(f"{where}.options", "expected a table of the model's options (input_size)",
               TypeError)
    return type(e)(spec.name, dict(e.options), e.label)


def check_dataset(c, e, where: str, info: dict, size_of):
    """The gallery entry with ``split`` (default ``"query"``), ``offset``, ``ads`` and ``train``
    normalised (every default filled in, so they are part of the cells' keys)."""
    if e.name not in DATASETS:
        c.fail(where, f"{e.name!r} has no captions; a text-image grid searches a captioned "
                      f"gallery: {', '.join(DATASETS)}", LookupError)
    opts = dict(e.options)
    opts.setdefault("split", DEFAULT_SPLIT)
    opts.setdefault("offset", 0)
    for key in ("photos", "gallery", "placements"):
        if key in opts:
            c.fail(f"{where}.{key}", f"a text-image dataset entry takes no {key!r} (the entry "
                                     f"itself is the gallery; ads = {{ n }}, "
                                     f"train = {{ split, n }})")
    ads = c.table(opts.get("ads", {}), f"{where}.ads")
    c.keys(ads, f"{where}.ads", {"n"})
    if "n" in ads and isinstance(ads["n"], int) and not isinstance(ads["n"], bool) and ads["n"] < 1:
        c.fail(f"{where}.ads.n", f"the ad image set is empty (n={ads['n']}); TTH pastes its patch "
                                 f"on at least one ad image (default {ADS_N})")
    opts["ads"] = {"n": c.wrap(f"{where}.ads", check_int, ads.get("n", ADS_N), "n", 1)}
    from .retrieval_config import check_split_part
    opts["train"] = check_split_part(c, opts.get("train", {}), f"{where}.train", _TRAIN_DEFAULTS,
                                     e.name, info, size_of)
    return type(e)(e.name, opts, e.label)


def gallery_size(name: str, options: dict, size_of) -> Optional[int]:
    """Images of a normalised gallery entry (``None`` when the registry does not say)."""
    if options.get("n") is not None:
        return int(options["n"])
    size = size_of(name, options.get("split", DEFAULT_SPLIT))
    return None if size is None else size - int(options.get("offset", 0))


def check_grid(c, raw: dict, g, where: str, size_of) -> None:
    """``keywords``, ``k`` and the TTH threat defaults of a text-image grid ``g`` (its datasets,
    attacks and defenses already parsed), and that its attacks and defenses fit the task."""
    from ..attacks.base import _ATTACKS
    from ..data.keywords import KEYWORDS
    from ..defenses.base import _DEFENSES
    from .config import _threat
    from .retrieval_config import _raw_names
    for key in REFUSED_KEYS:
        if key in raw:
            c.fail(f"{where}.{key}", f"only retrieval (hashing) grids take {key!r}; a text-image "
                                     f"grid is set by its keywords (keywords = ['coat'])")
    if len(g.stickers) > 1 or g.stickers[0].name != "none" or len(g.corruptions) > 1 \
            or g.corruptions[0]["name"] != "none":
        c.fail(where, "text-image grids take no stickers or corruptions")
    for i, name in _raw_names(raw, "attacks"):
        task = getattr(_ATTACKS.lookup(name), "task", "classification")
        if task != "text-image":
            c.fail(f"{where}.attacks[{i}]", f"{name!r} is an attack on the {task!r} task; a "
                                            f"text-image grid takes text-image attacks (tth)")
    for i, name in _raw_names(raw, "defenses"):
        if getattr(_DEFENSES.lookup(name), "output", "image") != "image":
            c.fail(f"{where}.defenses[{i}]", f"{name!r} returns class scores, not an image; an "
                                             f"image tower can only sit behind a purifier")
    if "keywords" not in raw:
        c.fail(f"{where}.keywords", f"missing: a text-image grid needs the keyword(s) its queries "
                                    f"contain and its ads target, e.g. keywords = ['coat'] (any of "
                                    f"{', '.join(KEYWORDS)})")
    values = raw["keywords"] if isinstance(raw["keywords"], list) else [raw["keywords"]]
    if not values:
        c.fail(f"{where}.keywords", "is empty (give at least one keyword)")
    g.keywords = []
    for i, kw in enumerate(values):
        if not isinstance(kw, str):
            c.fail(f"{where}.keywords[{i}]", f"expected a keyword string, got "
                                             f"{type(kw).__name__} {kw!r}", TypeError)
        folded = kw.strip().lower()
        if folded not in KEYWORDS:
            import difflib
            close = difflib.get_close_matches(folded, KEYWORDS, n=1)
            c.fail(f"{where}.keywords[{i}]", f"unknown keyword {kw!r}"
                   + (f" (did you mean {close[0]!r}?)" if close else "")
                   + f"; the captions' keywords are {', '.join(KEYWORDS)}", LookupError)
        if folded in g.keywords:
            c.fail(f"{where}.keywords[{i}]", f"{kw!r} is given twice")
        g.keywords.append(folded)
    g.k = c.wrap(where, check_int, raw.get("k", DEFAULT_K), "k", 1)
    for j, d in enumerate(g.datasets):
        m = gallery_size(d.name, d.options, size_of)
        if m is not None and g.k > m:
            c.fail(f"{where}.k", f"R@{g.k} over a gallery of {m} images "
                                 f"({where}.datasets[{j}]); use k <= {m}")
    raw_threats = raw.get("threats", [{}])
    raw_threats = raw_threats if isinstance(raw_threats, list) else [raw_threats]
    g.threats = [_threat(c, {**TTH_THREAT, **c.table(t, f"{where}.threats[{i}]")},
                         f"{where}.threats[{i}]") for i, t in enumerate(raw_threats)]


def refuse_outside(c, raw: dict, where: str, task: str) -> None:
    """Text-image-only grid keys in a grid of another task."""
    for k in GRID_KEYS:
        if k in raw:
            c.fail(f"{where}.{k}", f"only text-image grids take {k!r} (this grid's task is "
                                   f"{task!r})")


def cell_fields(grid, keyword) -> Dict[str, object]:
    """What a text-image cell's config adds to the common fields (only text-image cells carry
    them, so the keys of other tasks' cells do not change)."""
    return {"keyword": keyword, "k": int(grid.k if grid.k is not None else DEFAULT_K)}


__all__ = ["GRID_KEYS", "DATASET_KEYS", "DATASETS", "TTH_THREAT", "check_model", "check_dataset",
           "check_grid", "refuse_outside", "cell_fields", "gallery_size"]
