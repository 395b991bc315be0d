"""Helpers for the config dataclasses (``PatchZeroTrainConfig``, ``DefensivePatchConfig``): field
checks that name the field, and reading ``--config FILE.toml`` with errors that name the file, the
line (syntax errors) or the field (type and value errors) — never a bare ``tomllib`` or comparison
error."""
from __future__ import annotations

import dataclasses
import tomllib
from typing import Iterable, Mapping, Optional, Tuple

from ._validation import check_path


class UnknownNameError(LookupError, ValueError):
    """An unknown name in a config (a ``LookupError``; also a ``ValueError``, which config fields
    raised before, so existing ``except ValueError`` handlers keep working)."""


def name_list(value, name: str, choices: Optional[Iterable[str]] = None,
              allow_empty: bool = False) -> Tuple[str, ...]:
    """A tuple of names from one name or a sequence of names (a bare string is *one* name, never
    split into characters); with ``choices`` each must be one of them (``LookupError`` listing them)."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}: expected a name or a list of names, got {value!r}")
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise TypeError(f"{name}: expected names (non-empty strings), got {bad[0]!r} in {list(value)!r}")
    if not value and not allow_empty:
        raise ValueError(f"{name}: expected at least one name, got an empty list")
    if choices is not None:
        choices = tuple(choices)
        for v in value:
            if v not in choices:
                raise UnknownNameError(f"{name}: unknown name {v!r}; expected some of "
                                       f"{', '.join(map(repr, choices))}")
    return tuple(value)


def read_toml(path, name: str = "config") -> dict:
    """Parse the TOML file ``path``; ``name`` is the argument it came from (for the messages).

    Raises ``FileNotFoundError`` (missing), ``ValueError`` (a directory, unreadable, not UTF-8, or a
    syntax error: ``FILE: TOML syntax error: ... (at line L, column C)``) or ``TypeError`` (not a path).
    """
    p = check_path(path, name, kind="file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ValueError(f"{name}: cannot read {str(p)!r}: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{p}:{line}: not UTF-8 text (TOML files must be UTF-8)") from e
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p}: TOML syntax error: {e}") from e


def config_from_mapping(cls, data, source, allowed_extra: Iterable[str] = (),
                        label: Optional[str] = None):
    """``cls(**data)`` for a config dataclass, refusing unknown keys (listing the known ones) and
    prefixing every validation error with ``source`` (the file) so the message reads
    ``FILE: Config.field: expected ..., got ...``."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{source}: expected a table of {cls.__name__} fields, got "
                        f"{type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known) - set(allowed_extra))
    if unknown:
        raise ValueError(f"{source}: unknown {label or cls.__name__} keys {unknown}; known keys: "
                         f"{', '.join(sorted(known))}")
    kwargs = {k: v for k, v in data.items() if k in known}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, LookupError) as e:
        kind = next(k for k in (TypeError, LookupError, ValueError) if isinstance(e, k))
        raise kind(f"{source}: {e}") from e
