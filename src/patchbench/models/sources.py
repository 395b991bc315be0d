"""Model specs beyond the zoo: ``PREFIX:NAME`` (``torchvision:resnet18``, ``timm:vit_tiny_patch16_224``)
and a user's factory (``module:function``, ``path/to/file.py:function``).

:func:`patchbench.models.load` reads a spec in this order:

1. ``PREFIX:REST`` where ``PREFIX`` is in :data:`SOURCES` (folded like every name) → that source's
   loader. Another library is one :func:`register_source` call (issue 15's ``open_clip:``).
2. any other ``A:B`` → a factory: ``B`` is a function in ``A``, a module path (``my_pkg.nets``,
   imported) or a ``.py`` file (loaded by path, not added to ``sys.path``). It is called with the
   options given to ``load`` (e.g. ``num_classes=10``); it returns an ``nn.Module`` that maps
   normalised images to logits — wrapped with :func:`~patchbench.models.wrap.wrap`'s defaults (ImageNet
   mean/std, 224×224, classes from a forward pass) — or a classifier that takes [0, 1] images itself
   (e.g. ``pb.models.wrap(net, mean=..., std=...)``: the way to choose the normalisation).
3. anything else → a zoo name.

Packages are imported only when a spec needs them; one that is absent or does not import (this
machine's torchvision, built for another torch) raises :class:`MissingPackageError` saying what failed
and what to install. ``weights``: ``None`` = the source's pretrained default (torchvision / timm
download theirs on first use), ``False`` = random initialisation (seeded), a path = a state dict loaded
into the network (keys and shapes checked).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from .._registry import check_keywords, close_matches, normalize_name


class MissingPackageError(ImportError, LookupError):
    """A model spec needs a package that is not installed or does not import. An ``ImportError``, and
    a ``LookupError`` so that name checks (CLI flags, experiment files) report it like an unknown name."""


@dataclass(frozen=True)
class Source:
    """One ``PREFIX:NAME`` family of models.

    Attributes:
        prefix: what comes before the colon (``"torchvision"``).
        load: ``load(name, weights, device, seed, options) -> classifier`` (weights as in
            :func:`patchbench.models.load`); imports its package itself.
        package: the package it needs (checked with ``find_spec`` by :func:`check_spec`, no import).
        install: what to tell a user who lacks it.
        help: one line for ``--help`` and ``patchbench list models``.
    """

    prefix: str
    load: Callable
    package: Optional[str]
    install: str
    help: str


SOURCES: Dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """Add a ``PREFIX:`` family (folded like every registry name); returns ``source``."""
    if not isinstance(source, Source):
        raise TypeError(f"register_source: expected a Source, got {type(source).__name__}")
    SOURCES[normalize_name(source.prefix)] = source
    return source


def spec_forms() -> list:
    """``["torchvision:NAME", ...]`` plus the factory forms, as ``(form, help)`` pairs."""
    forms = [(f"{s.prefix}:NAME", s.help) for s in SOURCES.values()]
    forms += [("module:function", "a function in an importable module returning an nn.Module "
                                  "(normalised images → logits, wrapped with pb.models.wrap's "
                                  "defaults) or a classifier"),
              ("path/to/file.py:function", "the same, from a Python file")]
    return forms


def split_spec(spec: str) -> Tuple[str, Optional[str], Optional[str]]:
    """``(kind, head, rest)``: ``("source", prefix, name)``, ``("factory", module or file,
    function)`` or ``("zoo", None, None)``. Raises ``ValueError`` for an empty part."""
    if ":" not in spec:
        return "zoo", None, None
    head, _, rest = spec.partition(":")
    if normalize_name(head) in SOURCES:
        if not rest.strip():
            raise ValueError(f"model: {spec!r} names no model after {head!r}: expected "
                             f"{head}:NAME (e.g. torchvision:resnet18)")
        return "source", normalize_name(head), rest.strip()
    head, _, rest = spec.rpartition(":")
    if not head.strip() or not rest.strip() or not rest.strip().isidentifier():
        known = ", ".join(f"{s.prefix}:" for s in SOURCES.values())
        raise ValueError(f"model: {spec!r} is neither PREFIX:NAME ({known}) nor module:function / "
                         f"file.py:function (a Python function name after the last ':')")
    return "factory", head.strip(), rest.strip()


def _is_file_spec(head: str) -> bool:
    return head.endswith(".py") or os.sep in head or "/" in head


def check_factory(head: str, fn: str) -> None:
    """That ``head`` exists (a file, or a module ``find_spec`` sees), without importing it."""
    if _is_file_spec(head):
        p = Path(head).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"model: factory file {head!r} does not exist "
                                    f"(expected path/to/file.py:{fn})")
        return
    try:
        found = importlib.util.find_spec(head)
    except (ImportError, ValueError) as e:
        found, why = None, f" ({type(e).__name__}: {e})"
    else:
        why = ""
    if found is None:
        raise LookupError(f"model: no module {head!r} to take {fn!r} from{why}; give an importable "
                          f"module (on PYTHONPATH) or a file: path/to/file.py:{fn}")


def import_package(package: str, install: str, spec: str):
    """``import package``, or :class:`MissingPackageError` saying why (absent / broken) and
    ``install``."""
    if importlib.util.find_spec(package) is None:
        raise MissingPackageError(f"model {spec!r} needs {package}, which is not installed; {install}")
    try:
        return importlib.import_module(package)
    except Exception as e:  # noqa: BLE001 - a broken install raises RuntimeError, OSError, ...
        raise MissingPackageError(
            f"model {spec!r} needs {package}, which is installed but does not import "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); {install}") from e


def _factory_function(head: str, fn: str, spec: str) -> Callable:
    check_factory(head, fn)
    if _is_file_spec(head):
        path = Path(head).expanduser().resolve()
        mod_name = f"_patchbench_factory_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module          # dataclasses / pickling look the module up here
        try:
            loader_spec.loader.exec_module(module)
        except Exception:
            sys.modules.pop(mod_name, None)
            raise
    else:
        module = importlib.import_module(head)
    f = getattr(module, fn, None)
    if f is None or not callable(f):
        public = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                  and getattr(v, "__module__", None) == module.__name__]
        hint = close_matches(fn, public)
        raise LookupError(f"model: {head!r} has no function {fn!r}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + (f"; its functions: {', '.join(sorted(public))}" if public else ""))
    return f


def load_factory(head: str, fn: str, weights, device, seed: int, options: dict, spec: str):
    """Call the user's factory ``head:fn(**options)`` (seeded) and make a classifier of its result."""
    from .wrap import is_classifier, wrap
    from .zoo import _load_weights_into

    f = _factory_function(head, fn, spec)
    check_keywords(f, options, f"model {spec!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        made = f(**options)
    if not isinstance(made, nn.Module):
        raise TypeError(f"model: the factory {spec!r} returned {type(made).__name__}; expected a "
                        f"torch.nn.Module (normalised images → logits) or a classifier")
    if not is_classifier(made):
        made = wrap(made, name=spec)
    if isinstance(weights, (str, os.PathLike)):
        target = made.net if hasattr(made, "net") and isinstance(made.net, nn.Module) else made
        _load_weights_into(target, weights, spec, getattr(made, "normalize", None))
    return made.to(device).eval()


def load_spec(spec: str, weights, device, seed: int, options: dict):
    """The classifier a prefixed or factory ``spec`` names (see the module doc); ``None`` for a
    zoo name (the zoo loads those)."""
    kind, head, rest = split_spec(spec)
    if kind == "zoo":
        return None
    if kind == "factory":
        return load_factory(head, rest, weights, device, seed, options, spec)
    return SOURCES[head].load(rest, weights, device, seed, options).to(device).eval()


def check_spec(spec: str) -> str:
    """Check a model spec without building it or importing a package: a zoo name (folded, its
    canonical spelling returned), ``PREFIX:NAME`` whose package is installed, or a factory whose
    module / file exists. Raises ``TypeError``, ``ValueError``, ``LookupError`` (unknown zoo name,
    missing module; :class:`MissingPackageError`) or ``FileNotFoundError``."""
    from .zoo import get_spec

    if not isinstance(spec, str):
        raise TypeError(f"model: expected a string (a zoo name, PREFIX:NAME or module:function), got "
                        f"{type(spec).__name__} {spec!r}")
    kind, head, rest = split_spec(spec)
    if kind == "zoo":
        return get_spec(spec).name
    if kind == "factory":
        check_factory(head, rest)
        return spec
    src = SOURCES[head]
    if src.package and importlib.util.find_spec(src.package) is None:
        raise MissingPackageError(f"model {spec!r} needs {src.package}, which is not installed; "
                                  f"{src.install}")
    return f"{src.prefix}:{rest}"


# --------------------------------------------------------------------------- torchvision, timm
def _weights_arg(weights, spec: str) -> str:
    if weights is None:
        return "pretrained"
    if weights is False:
        return "random"
    if isinstance(weights, (str, os.PathLike)) and not isinstance(weights, bool):
        return "file"
    raise TypeError(f"weights: expected None, False or a file path, got {weights!r}")


def _unknown(lib: str, name: str, known, spec: str) -> LookupError:
    known = sorted(known)
    hint = close_matches(name, known, n=5)
    return LookupError(f"model: {lib} has no model {name!r} ({spec!r})"
                       + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "")
                       + f" ({len(known)} models: see {lib}'s list_models())")


def _seeded(build: Callable, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


_TV_INSTALL = ("install the torchvision release built for your torch "
               f"(torch {torch.__version__.split('+')[0]}; see the compatibility table at "
               "https://github.com/pytorch/vision#installation), or use a zoo model "
               "(patchbench list models)")


def load_torchvision(name: str, weights, device, seed: int, options: dict):
    """``torchvision.models.get_model(name, weights=...)`` behind :func:`wrap`: ImageNet mean/std,
    the weights' own crop size and category names when pretrained."""
    from .wrap import wrap
    from .zoo import _load_weights_into

    spec = f"torchvision:{name}"
    how = _weights_arg(weights, spec)
    tv = import_package("torchvision", _TV_INSTALL, spec)
    known = tv.models.list_models()
    if name not in known:
        raise _unknown("torchvision", name, known, spec)
    tv_weights, size, categories = None, 224, None
    if how == "pretrained":
        tv_weights = tv.models.get_model_weights(name).DEFAULT
        categories = tv_weights.meta.get("categories")
        crop = getattr(tv_weights.transforms(), "crop_size", None)
        if crop:
            size = int(crop[0]) if isinstance(crop, (list, tuple)) else int(crop)
    try:
        net = _seeded(lambda: tv.models.get_model(name, weights=tv_weights, **options), seed)
    except (OSError, RuntimeError) as e:       # no network / a broken cache: say how to go on
        raise LookupError(f"model {spec!r}: torchvision could not get its pretrained weights "
                          f"({type(e).__name__}: {e}); download them where there is a network, or "
                          f"pass weights=PATH (a state dict) or weights=False") from e
    if how == "file":
        _load_weights_into(net, weights, spec)
    names = categories if categories and len(categories) == options.get("num_classes", 1000) else None
    return wrap(net.to(device), input_size=size, class_names=names, name=spec)


def load_timm(name: str, weights, device, seed: int, options: dict):
    """``timm.create_model(name, pretrained=...)`` behind :func:`wrap`, with the model's own
    ``pretrained_cfg`` mean, std and input size (ImageNet's 224 otherwise)."""
    from .wrap import wrap
    from .zoo import _load_weights_into

    spec = f"timm:{name}"
    how = _weights_arg(weights, spec)
    timm = import_package("timm", "pip install timm (it needs a torchvision that imports with your "
                                  "torch)", spec)
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models(), spec)
    try:
        net = _seeded(lambda: timm.create_model(name, pretrained=how == "pretrained", **options),
                      seed)
    except (OSError, RuntimeError) as e:
        raise LookupError(f"model {spec!r}: timm could not get its pretrained weights "
                          f"({type(e).__name__}: {e}); download them where there is a network, or "
                          f"pass weights=PATH (a state dict) or weights=False") from e
    if how == "file":
        _load_weights_into(net, weights, spec)
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    from .base import IMAGENET_MEAN, IMAGENET_STD
    size = cfg.get("input_size", (3, 224, 224))
    return wrap(net.to(device), mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                std=tuple(cfg.get("std", IMAGENET_STD)), input_size=tuple(size[-2:]), name=spec)


register_source(Source("torchvision", load_torchvision, "torchvision", _TV_INSTALL,
                       "any torchvision.models classifier (e.g. torchvision:resnet18; lazy, needs "
                       "a torchvision that imports, downloads its weights on first use)"))
register_source(Source("timm", load_timm, "timm", "pip install timm",
                       "any timm model (e.g. timm:resnet18; lazy, needs timm and torchvision, "
                       "downloads its weights on first use)"))

