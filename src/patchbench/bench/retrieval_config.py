"""What a retrieval grid adds to an experiment file (PAIR, ACM MM 2024, §5.1 and Table 2; the
victim is a hasher, the attack AdvHash, Hu et al. ACM MM 2021), validated on load so every mistake
names its table path.

A retrieval grid (``[experiment] task = "retrieval"``, or ``task = "retrieval"`` in one
``[[grid]]``)::

    [[grid]]
    task = "retrieval"
    models   = ["csq_fmnist_objects_64"]          # zoo hashers (patchbench list models)
    datasets = [{ name = "fmnist-objects", split = "query", n = 100,
                  gallery = { split = "database", n = 2000 },   # the database searched
                  train = { split = "train", n = 50 } }]        # AdvHash's training images
    attacks  = ["none", { name = "advhash", iterations = 100 }]
    defenses = ["none", "jpeg", { name = "pair", checkpoint = "@pair" }]
    threats  = [{ area = 0.05 }]          # PAIR §5.1: a square of 5 % of the area (side 0.22)
    targets  = [3]                        # AdvHash's target class (an axis: one cell per target)
    k = 1000                              # mAP@k (default min(1000, gallery size))
    purify_gallery = false                # also pass the database through the defense

* ``split`` of a retrieval dataset entry defaults to ``"query"``; its ``n`` is the query pool.
* ``gallery``: ``split`` (default ``"database"``), ``offset`` (0), ``n`` (default: the whole split).
  Its codes under the bare hasher are the database the system searches (and the votes of the
  target anchor), unless ``purify_gallery = true``.
* ``train``: ``split`` (default ``"train"``), ``offset`` (0), ``n`` (default 50, the paper's): the
  first ``n`` images of the split from ``offset`` on *whose label does not contain the target*
  (AdvHash trains on images of other classes). A universal patch is fitted there and pasted on the
  queries; the target class's own queries are scored clean only.
* ``targets``: required when the grid has an attack; each in ``0 .. num_classes - 1``.
* ``k`` must fit in every dataset entry's gallery.

Models are zoo entries of kind ``"hasher"``, with ``weights = "@ARTIFACT"`` (a ``hasher`` artifact),
a file path, or ``false`` (an untrained hasher with the ImageNet backbone, seeded: for tests and
smoke runs). Attacks must be retrieval attacks (``advhash``), defenses purifiers (a
prediction-level defense such as PatchCleanser has no image to hash).
"""
from __future__ import annotations

from typing import Dict, Optional

from .._validation import check_bool, check_int

#: grid keys only retrieval grids take
GRID_KEYS = ("targets", "k", "purify_gallery")
#: dataset entry keys a retrieval grid reads itself
DATASET_KEYS = ("gallery", "train")
_PART_DEFAULTS = {"gallery": {"split": "database", "offset": 0, "n": None},
                  "train": {"split": "train", "offset": 0, "n": 50}}
DEFAULT_SPLIT = "query"
TRAIN_N = 50          # AdvHash: "trained on 50 images of other classes" (PAIR §5.1)


def check_model(c, e, where: str):
    """A zoo hasher entry (``weights``: a path, ``"@ARTIFACT"`` or ``false``; ``options``)."""
    from ..models import zoo
    spec = c.wrap(where, zoo.get_spec, e.name)
    if spec.kind != "hasher":
        c.fail(where, f"{spec.name!r} is a {spec.kind}; a retrieval grid needs a hasher: "
                      f"{', '.join(zoo.names(kind='hasher')) or 'none registered'}", LookupError)
    c.keys(e.options, where, {"weights", "options"})
    w = e.options.get("weights")
    if "weights" in e.options and w is not False and not isinstance(w, str):
        c.fail(f"{where}.weights", f"expected a file path, '@artifact' or false (untrained), got "
                                   f"{type(w).__name__} {w!r}", TypeError)
    if not isinstance(e.options.get("options", {}), dict):
        c.fail(f"{where}.options", "expected a table of the hasher's options (bits, input_size)",
               TypeError)
    return type(e)(spec.name, dict(e.options), e.label)


def check_dataset(c, e, where: str, info: dict, size_of):
    """The entry with its ``split`` (default ``"query"``), ``gallery`` and ``train`` tables
    normalised (every default filled in, so they are part of the cells' keys)."""
    opts = dict(e.options)
    opts.setdefault("split", DEFAULT_SPLIT)
    for part, defaults in _PART_DEFAULTS.items():
        opts[part] = check_split_part(c, opts.get(part, {}), f"{where}.{part}", defaults, e.name,
                                      info, size_of)
    return type(e)(e.name, opts, e.label)


def check_split_part(c, raw, path: str, defaults: dict, name: str, info: dict, size_of) -> dict:
    """One ``{split, offset, n}`` table of a dataset entry (a retrieval gallery / attack-training
    part, a text-image caption split), checked against the dataset's splits and their sizes; the
    missing keys take ``defaults``. Errors name ``path``."""
    t = c.table(raw, path)
    c.keys(t, path, set(defaults))
    spec = {**defaults, **t}
    if spec["split"] not in info.get("splits", [spec["split"]]):
        c.fail(f"{path}.split", f"expected one of {info['splits']}, got {spec['split']!r}",
               LookupError)
    spec["offset"] = c.wrap(path, check_int, spec["offset"], "offset", 0)
    if spec["n"] is not None:
        spec["n"] = c.wrap(path, check_int, spec["n"], "n", 1)
    size = size_of(name, spec["split"])
    if size is not None and spec["offset"] >= size:
        c.fail(f"{path}.offset", f"the {name!r} {spec['split']} split has {size} images, got "
                                 f"offset={spec['offset']}")
    if size is not None and spec["n"] is not None and spec["offset"] + spec["n"] > size:
        c.fail(f"{path}.n", f"the {name!r} {spec['split']} split has {size} images, got "
                            f"n={spec['n']}" + (f" from offset={spec['offset']}"
                                                if spec["offset"] else ""))
    return spec


def gallery_size(name: str, spec: dict, size_of) -> Optional[int]:
    """Items of a normalised ``gallery`` table (``None`` when the registry does not say)."""
    if spec.get("n") is not None:
        return int(spec["n"])
    size = size_of(name, spec["split"])
    return None if size is None else size - int(spec.get("offset", 0))


def check_grid(c, raw: dict, g, where: str, size_of) -> None:
    """``targets``, ``k``, ``purify_gallery`` of a retrieval grid ``g`` (its datasets, attacks and
    defenses already parsed), and that its attacks and defenses fit the task."""
    from ..attacks.base import _ATTACKS
    from ..data import dataset_info
    from ..defenses.base import _DEFENSES
    for i, name in _raw_names(raw, "attacks"):
        task = getattr(_ATTACKS.lookup(name), "task", "classification")
        if task != "retrieval":
            c.fail(f"{where}.attacks[{i}]", f"{name!r} is an attack on the {task!r} task; a "
                                            f"retrieval grid takes retrieval attacks (advhash)")
    for i, name in _raw_names(raw, "defenses"):
        if getattr(_DEFENSES.lookup(name), "output", "image") != "image":
            c.fail(f"{where}.defenses[{i}]", f"{name!r} returns class scores, not an image; a "
                                             f"hasher can only sit behind a purifier")
    attacked = any(a.name != "none" for a in g.attacks)
    if "targets" not in raw:
        if attacked:
            c.fail(f"{where}.targets", "missing: AdvHash is targeted; give the target class(es), "
                                       "e.g. targets = [3]")
        g.targets = [None]
    else:
        values = raw["targets"] if isinstance(raw["targets"], list) else [raw["targets"]]
        if not values:
            c.fail(f"{where}.targets", "is empty (give at least one target class)")
        g.targets = []
        for i, t in enumerate(values):
            if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                c.fail(f"{where}.targets[{i}]", f"expected a class index (an integer >= 0), got "
                                                f"{type(t).__name__} {t!r}",
                       ValueError if isinstance(t, int) and not isinstance(t, bool) else TypeError)
            for j, d in enumerate(g.datasets):
                k = dataset_info(d.name).get("num_classes")
                if k is not None and t >= k:
                    c.fail(f"{where}.targets[{i}]", f"class {t} out of range: {d.name!r} "
                                                    f"(datasets[{j}]) has classes 0..{k - 1}")
            g.targets.append(t)
    g.k = None
    if "k" in raw:
        g.k = c.wrap(where, check_int, raw["k"], "k", 1)
        for j, d in enumerate(g.datasets):
            m = gallery_size(d.name, d.options["gallery"], size_of)
            if m is not None and g.k > m:
                c.fail(f"{where}.k", f"mAP@{g.k} over a gallery of {m} items "
                                     f"({where}.datasets[{j}].gallery); use k <= {m}")
    g.purify_gallery = c.wrap(where, check_bool, raw.get("purify_gallery", False),
                              "purify_gallery")


def _raw_names(raw: dict, axis: str):
    """``(index, name)`` of the file's entries of one axis but ``none`` (already validated)."""
    values = raw.get(axis, [])
    for i, r in enumerate(values if isinstance(values, list) else [values]):
        name = r if isinstance(r, str) else r.get("name") if isinstance(r, dict) else None
        if isinstance(name, str) and name.strip().lower() != "none":
            yield i, name.strip()


def refuse_outside(c, raw: dict, where: str, task: str) -> None:
    """Retrieval-only grid keys in a grid of another task."""
    for k in GRID_KEYS:
        if k in raw:
            c.fail(f"{where}.{k}", f"only retrieval grids take {k!r} (this grid's task is {task!r})")


def cell_fields(grid, target) -> Dict[str, object]:
    """What a retrieval cell's config adds to the common fields (only retrieval cells carry them,
    so the keys of other tasks' cells do not change)."""
    return {"target": target, "k": grid.k, "purify_gallery": bool(grid.purify_gallery)}


__all__ = ["GRID_KEYS", "DATASET_KEYS", "check_model", "check_dataset", "check_grid",
           "refuse_outside", "cell_fields", "gallery_size"]
