"""Name → class registries (timm's ``create_model`` idea): attacks and defenses are found by name in
one place, so the CLI and config files resolve names the same way everywhere."""
from __future__ import annotations

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

    def get(self, name: str, **kwargs):
        key = normalize_name(name)
        if key not in self._classes:
            raise LookupError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._classes[key](**kwargs)

    def names(self) -> List[str]:
        return sorted(self._classes)
