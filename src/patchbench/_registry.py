"""Names: one folding rule and one look-up for every registry (timm's ``create_model`` idea).

Models, attacks, defenses, corruptions, datasets, tasks and experiments are all found by name, and a
name is folded the same way everywhere (:func:`normalize_name`): case does not matter, ``_``, ``-``
and inner spaces are the same separator, surrounding spaces are ignored. So ``"Masked_PGD"``,
``"masked-pgd"`` and ``" masked pgd "`` are one attack, and ``"Gaussian-Noise"`` is the corruption
``"gaussian_noise"``. Each registry keeps its canonical display names as they are (models
``"fmnist_cnn_small"``, corruptions ``"gaussian_noise"``, attacks ``"masked-pgd"``); folding only
decides which canonical name a spelling means.

An unknown name is a ``LookupError`` that lists the known ones, close matches first
(``did you mean 'masked-pgd'?``). ``patchbench.list(kind)`` (:func:`list_names`) shows what exists.
"""
from __future__ import annotations

import builtins
import difflib
import importlib
import inspect
from typing import Callable, Dict, Iterable, List, Optional


def normalize_name(name: str) -> str:
    """The one folding rule: ``"Masked_PGD"`` → ``"masked-pgd"``, ``" Gaussian noise "`` →
    ``"gaussian-noise"``. Case-insensitive; ``_``, ``-`` and runs of inner white space are one
    separator (``-``); surrounding white space is ignored."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a string, got {type(name).__name__} {name!r}")
    return "-".join(name.strip().lower().replace("_", "-").split())


def close_matches(name: str, names: Iterable[str], n: int = 3) -> List[str]:
    """The canonical names among ``names`` closest to ``name`` once folded (best first; may be
    empty): the "did you mean" of an unknown-name error."""
    by_key: Dict[str, str] = {}
    for canonical in names:
        by_key.setdefault(normalize_name(canonical), canonical)
    key = normalize_name(name) if isinstance(name, str) else str(name)
    return [by_key[k] for k in difflib.get_close_matches(key, list(by_key), n=n, cutoff=0.7)]


def unknown_name_error(name, names: Iterable[str], kind: str, argument: Optional[str] = None,
                       known: str = "available") -> LookupError:
    """``LookupError`` for a name that is not in ``names``: ``"<argument>: unknown <kind> 'x' (did
    you mean 'y'?); <known>: a, b, c"`` (the full list follows the close matches)."""
    names = builtins.list(names)
    hints = close_matches(name, names) if isinstance(name, str) else []
    hint = (f" (did you mean {_either(hints)}?)" if hints else "")
    prefix = f"{argument}: " if argument else ""
    return LookupError(f"{prefix}unknown {kind} {name!r}{hint}; {known}: {', '.join(names)}")


def _either(names: List[str]) -> str:
    quoted = builtins.list(map(repr, names))
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def resolve_name(name, names: Iterable[str], kind: str, argument: Optional[str] = None,
                 known: str = "available") -> str:
    """The canonical name in ``names`` that ``name`` folds to (see :func:`normalize_name`).

    Raises ``TypeError`` for a non-string (naming ``argument``, or "<kind> name") and the
    :func:`unknown_name_error` ``LookupError`` for a name that folds to none of them.
    """
    names = builtins.list(names)
    if not isinstance(name, str):
        raise TypeError(f"{argument or kind + ' name'}: expected a string, got "
                        f"{type(name).__name__} {name!r}; one of: {', '.join(names)}")
    key = normalize_name(name)
    for canonical in names:
        if normalize_name(canonical) == key:
            return canonical
    raise unknown_name_error(name, names, kind, argument, known)


class Registry:
    """Classes registered under a name, built with ``get(name, **kwargs)``; names fold with
    :func:`normalize_name` and keep the spelling they were registered with."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: Dict[str, Callable] = {}
        self._names: Dict[str, str] = {}      # folded key → canonical name

    def register(self, name: str, check: Optional[Callable] = None):
        """Class decorator; ``check(cls)`` may reject a class with an error before it is added.
        Registering a name again replaces it; a *different* name that folds to the same key (say
        ``"my_attack"`` beside ``"my-attack"``) is a ``ValueError``."""
        key = normalize_name(name)
        if key in self._names and self._names[key] != name:
            raise ValueError(f"{self.kind} name {name!r} folds to the same name as the registered "
                             f"{self._names[key]!r} (case, '_' and '-' do not tell names apart)")

        def deco(cls):
            if check is not None:
                check(cls)
            self._classes[key] = cls
            self._names[key] = name
            cls.name = name
            return cls

        return deco

    def lookup(self, name: str) -> Callable:
        """The class registered under ``name``; ``LookupError`` listing the names otherwise."""
        canonical = resolve_name(name, self.names(), self.kind)
        return self._classes[normalize_name(canonical)]

    def get(self, name: str, **kwargs):
        """Build ``name`` with ``kwargs``; a keyword the class does not take is a ``TypeError``
        naming it and listing the accepted ones (e.g. ``steps`` for a patch trained in ``epochs``)."""
        cls = self.lookup(name)
        check_keywords(cls, kwargs, f"{self.kind} {name!r}")
        return cls(**kwargs)

    def names(self) -> List[str]:
        """The canonical names, sorted."""
        return sorted(self._names.values())


def check_keywords(fn: Callable, kwargs: dict, what: str) -> None:
    """``TypeError`` naming every key of ``kwargs`` that ``fn`` (a class or function) does not take."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):   # builtins without a signature: let the call decide
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        accepted = ", ".join(k for k, p in params.items()
                             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        raise TypeError(f"{what}: unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}; {getattr(fn, '__name__', what)} accepts: "
                        f"{accepted}")


# --------------------------------------------------------------------------- pb.list(kind)
# kind → (module, function returning the canonical names); imported on first use so that
# ``import patchbench`` stays cheap and one area's optional dependency never breaks another.
_KINDS: Dict[str, tuple] = {
    "models": ("patchbench.models.zoo", "names"),
    "attacks": ("patchbench.attacks", "names"),
    "defenses": ("patchbench.defenses", "names"),
    "corruptions": ("patchbench.corruptions.registry", None),
    "datasets": ("patchbench.data.registry", "dataset_names"),
    "tasks": ("patchbench.tasks", "names"),
    "experiments": ("patchbench.bench.config", "bundled_names"),
}

#: the kinds :func:`list_names` takes (the singular forms are accepted too).
KINDS = tuple(_KINDS)


def list_names(kind: str) -> List[str]:
    """The canonical names of one kind of thing (``patchbench.list(kind)``).

    Args:
        kind: one of :data:`KINDS` — ``"models"``, ``"attacks"``, ``"defenses"``, ``"corruptions"``,
            ``"datasets"``, ``"tasks"``, ``"experiments"`` — or its singular (``"model"``, ...),
            folded like any name.

    Returns:
        a new list of names, each accepted by that kind's look-up (``models.load``,
        ``attacks.get``, ``corrupt``, ``data.load_dataset``, ...). Corruptions come in ImageNet-C's
        order (benchmark first, then the four extra ones); every other kind is sorted.

    Raises:
        TypeError: ``kind`` is not a string. LookupError: an unknown kind (the message lists them).

    Example::

        >>> import patchbench as pb
        >>> pb.list("attacks")
        ['lavan', 'masked-apgd', 'masked-cw', 'masked-pgd', 'universal-patch']
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind: expected one of {', '.join(KINDS)}, got {type(kind).__name__} "
                        f"{kind!r}")
    singular = {k[:-1]: k for k in KINDS}
    key = normalize_name(kind)
    plural = singular.get(key, key)
    if plural not in _KINDS:
        raise unknown_name_error(kind, KINDS, "kind", "kind", known="expected one of")
    module, fn = _KINDS[plural]
    mod = importlib.import_module(module)
    if fn is None:
        return builtins.list(mod.CORRUPTIONS)
    return builtins.list(getattr(mod, fn)())
