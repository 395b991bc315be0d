"""Name → class registries (timm's ``create_model`` idea): attacks and defenses are found by name in
one place, so the CLI and config files resolve names the same way everywhere."""
from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Optional


def normalize_name(name: str) -> str:
    """``"Masked_PGD"`` → ``"masked-pgd"``: names are case- and ``_``/``-``-insensitive."""
    return str(name).lower().replace("_", "-")


class Registry:
    """Classes registered under a name, built with ``get(name, **kwargs)``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: Dict[str, Callable] = {}

    def register(self, name: str, check: Optional[Callable] = None):
        """Class decorator; ``check(cls)`` may reject a class with an error before it is added."""

        def deco(cls):
            if check is not None:
                check(cls)
            self._classes[normalize_name(name)] = cls
            cls.name = name
            return cls

        return deco

    def lookup(self, name: str) -> Callable:
        """The class registered under ``name``; ``LookupError`` listing the names otherwise."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name: expected a string, got {name!r}")
        key = normalize_name(name)
        if key not in self._classes:
            raise LookupError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._classes[key]

    def get(self, name: str, **kwargs):
        """Build ``name`` with ``kwargs``; a keyword the class does not take is a ``TypeError``
        naming it and listing the accepted ones (e.g. ``steps`` for a patch trained in ``epochs``)."""
        cls = self.lookup(name)
        check_keywords(cls, kwargs, f"{self.kind} {name!r}")
        return cls(**kwargs)

    def names(self) -> List[str]:
        return sorted(self._classes)


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
