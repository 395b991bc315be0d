"""Pieces every view shares: display labels, number formatting, cell descriptions and the
"which config fields vary" rule that decides what splits tables and what labels a row or a column.
"""
from __future__ import annotations

import html
import json
import math
from typing import Dict, Iterable, List, Sequence

from ..._registry import normalize_name

ATTACK_LABELS = {"none": "no attack", "masked-pgd": "MPGD", "masked-apgd": "MAPGD",
                 "masked-cw": "MCW", "lavan": "LaVAN", "universal-patch": "universal patch",
                 "face-patch": "face patch", "advhash": "AdvHash", "fgsm": "FGSM", "pgd-linf": "PGD-L∞"}
DEFENSE_LABELS = {"none": "Undefended", "jpeg": "JPEG", "median-filter": "Median filter",
                  "gaussian-filter": "Gaussian filter", "lgs": "LGS", "slgs": "SLGS", "wlgs": "WLGS",
                  "patchcleanser": "PatchCleanser", "patchzero": "PatchZero", "sac": "SAC",
                  "mae-defense": "MAEDefense", "pair": "PAIR", "gt-mask": "GT mask (oracle)"}
# PatchZero Table 1 order: the undefended model first, the oracle (an upper bound) last
DEFENSE_ORDER = ("none", "jpeg", "median-filter", "gaussian-filter", "lgs", "slgs", "wlgs",
                 "patchcleanser", "patchzero", "sac", "mae-defense", "pair")
ATTACK_ORDER = ("none", "masked-pgd", "masked-apgd", "masked-cw", "lavan", "universal-patch")
ORACLES = ("gt-mask",)


def esc(v) -> str:
    return html.escape(str(v))


def name_of(config: dict, field: str) -> str:
    """A config's attack/defense/model name in canonical form (``"none"`` when absent)."""
    v = config.get(field)
    return normalize_name(v).strip() if v not in (None, "") else "none"


def order_key(name: str, order: Sequence[str]):
    """Known names in ``order``, then unknown names alphabetically, then the oracles."""
    if name in ORACLES:
        return (2, ORACLES.index(name), "")
    return (0, order.index(name), "") if name in order else (1, 0, name)


def attack_label(name: str) -> str:
    return ATTACK_LABELS.get(name, name)


def defense_label(name: str) -> str:
    return DEFENSE_LABELS.get(name, name)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def pct(v, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage without the sign (``0.625`` → ``"62.5"``); ``–`` for
    none/NaN."""
    if not is_number(v) or math.isnan(v):
        return "–"
    return f"{100 * v:.{digits}f}"


def ci_text(ci) -> str:
    """``[lo, hi]`` → ``"55.0–69.5"`` (percent), ``""`` when absent."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(is_number(c) and c == c for c in ci):
        return f"{pct(ci[0])}–{pct(ci[1])}"
    return ""


def area_text(area) -> str:
    return f"{100 * area:g}%" if is_number(area) else "–"


def options_text(options) -> str:
    """``{"steps": 10, "eps": 1.0}`` → ``"eps=1, steps=10"``."""
    if not isinstance(options, dict) or not options:
        return ""
    return ", ".join(f"{k}={_short(v)}" for k, v in sorted(options.items()))


def _short(v) -> str:
    """A config value for a caption or a cell: never a raw dict or list (``{"a": 1, "b": [2, 3]}``
    → ``(a=1, b=2/3)``)."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "(" + ", ".join(f"{k}={_short(x)}" for k, x in sorted(v.items())) + ")" if v \
            else "–"
    if isinstance(v, (list, tuple)):
        return "/".join(_short(x) for x in v) if v else "–"
    return str(v)


def display(v) -> str:
    """A config value as readable text (:func:`_short`): for titles and cells."""
    return _short(v)


def canonical(v) -> str:
    """A hashable, order-independent form of a config value (for grouping)."""
    return json.dumps(v, sort_keys=True, default=str)


def varying(dicts: Iterable[dict]) -> List[str]:
    """Keys whose value differs between the dicts (a key missing from some counts as differing)."""
    dicts = list(dicts)
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({canonical(d.get(k, "<missing>")) for d in dicts}) > 1]


def pick(options, keys: Iterable[str]) -> dict:
    options = options if isinstance(options, dict) else {}
    return {k: options[k] for k in keys if k in options}


def attacker_of(config: dict) -> str:
    """``"none"``, ``"DO"`` (the attack on the bare model) or ``"adaptive"``."""
    if name_of(config, "attack") == "none":
        return "none"
    return "adaptive" if config.get("adaptive") else "DO"


# config fields with a place of their own in a description; any other field that varies is appended
_NAMED = {"experiment", "task", "model", "dataset", "attack", "attack_options", "defense",
          "defense_options", "patch_area", "threat", "adaptive", "seed", "artifacts", "n", "schema",
          "labels"}


def user_label(config: dict, field: str) -> str:
    """The label the experiment file gave an attack/defense (``labels.defense``), ``""`` when it is
    just the name."""
    labels = config.get("labels")
    lab = labels.get(field) if isinstance(labels, dict) else None
    if not isinstance(lab, str) or not lab.strip() or \
            normalize_name(lab).strip() == name_of(config, field):
        return ""
    return lab.strip()


class CellNamer:
    """Names cells within one run: an attack's or a defense's options are shown only where they vary
    between the run's cells of that attack/defense (the registry defaults every cell shares are
    noise), and so is any other config field that varies (``model_options``, ``n``, ...)."""

    def __init__(self, configs: Iterable[dict]):
        configs = list(configs)
        self._opts: Dict[tuple, List[str]] = {}
        for field in ("attack", "defense"):
            by: Dict[tuple, List[dict]] = {}
            for c in configs:
                o = c.get(f"{field}_options")
                by.setdefault(self._who(c, field), []).append(o if isinstance(o, dict) else {})
            for who, opts in by.items():
                self._opts[who] = varying(opts)
        self.extra = [k for k in varying(configs) if k not in _NAMED]

    @staticmethod
    def _who(config: dict, field: str) -> tuple:
        return (field, name_of(config, field), user_label(config, field))

    def options(self, config: dict, field: str) -> dict:
        """The options of the cell's attack/defense that vary between the run's cells of it."""
        return pick(config.get(f"{field}_options"), self._opts.get(self._who(config, field), ()))

    def key(self, config: dict, field: str) -> tuple:
        """What tells two attacks/defenses apart in this run: name, label and varying options."""
        return self._who(config, field) + (canonical(self.options(config, field)),)

    def variant(self, config: dict, field: str) -> str:
        """``"MPGD"`` or ``"MPGD (steps=100)"``; ``"LGS (smoothing_factor=2.3)"``; the experiment's
        label (``"patchzero-do"``) where it gave one."""
        name = name_of(config, field)
        label = user_label(config, field) or (attack_label(name) if field == "attack"
                                              else defense_label(name))
        opts = options_text(self.options(config, field))
        return f"{label} ({opts})" if opts else label

    def extras(self, config: dict) -> str:
        return ", ".join(f"{k}={_short(config.get(k))}" for k in self.extra)

    def describe(self, config: dict) -> str:
        """One line naming a cell: model, dataset, area, attack and attacker, defense, seed."""
        parts = [str(config.get("model", "?")), str(config.get("dataset", "?"))]
        if name_of(config, "attack") != "none":
            threat = config.get("threat") if isinstance(config.get("threat"), dict) else {}
            geometry = ", ".join(str(threat[k]) for k in ("shape", "placement") if k in threat)
            parts.append(f"area {area_text(config.get('patch_area'))}"
                         + (f" ({geometry})" if geometry else ""))
            parts.append(f"{self.variant(config, 'attack')} {attacker_of(config)}")
        else:
            parts.append("no attack")
        parts.append(f"vs {self.variant(config, 'defense')}")
        if config.get("seed") is not None:
            parts.append(f"seed {config['seed']}")
        if self.extra:
            parts.append(self.extras(config))
        return " · ".join(parts)

    def sort_key(self, config: dict) -> tuple:
        """Grid order for listings: model, dataset, area, attack, attacker, defense, seed."""
        area = config.get("patch_area")
        seed = config.get("seed")
        return (str(config.get("model")), str(config.get("dataset")),
                canonical(config.get("model_options")), canonical(config.get("dataset_options")),
                area if is_number(area) and name_of(config, "attack") != "none" else -1.0,
                order_key(name_of(config, "attack"), ATTACK_ORDER), self.key(config, "attack"),
                ("none", "DO", "adaptive").index(attacker_of(config)),
                order_key(name_of(config, "defense"), DEFENSE_ORDER), self.key(config, "defense"),
                seed if is_number(seed) else -1, self.extras(config))

    def columns(self, config: dict) -> Dict[str, str]:
        """The config as the short text columns of a listing (failed cells, comparison)."""
        attacked = name_of(config, "attack") != "none"
        out = {"model": str(config.get("model", "?")), "dataset": str(config.get("dataset", "?")),
               "area": area_text(config.get("patch_area")) if attacked else "",
               "attack": self.variant(config, "attack"), "attacker": attacker_of(config),
               "defense": self.variant(config, "defense"),
               "seed": "" if config.get("seed") is None else str(config["seed"])}
        if self.extra:
            out["other"] = self.extras(config)
        return out
