"""Table-driven fuzz cases for ``tests/test_fuzz.py`` (issue 12).

Each area module (``models``, ``attacks``, ``defenses``, ``data_cli``, ``corruptions``, ...) defines
``CASES``: a list of :class:`Case`. A case is one malformed (or borderline) call. It passes when the
call either

* raises one of :data:`ALLOWED` with a message that names the argument (any of ``names``, compared
  case-insensitively), or
* returns, and ``check(result)`` confirms the result is correct (a case without ``check`` may not
  return: accepting the input silently is the failure we hunt for).

Anything else — another exception type (an "obscure crash"), or a message that does not say what
was wrong — fails the test with the case's id.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

ALLOWED = (ValueError, TypeError, LookupError, FileNotFoundError)


@dataclass
class Case:
    id: str
    call: Callable[[], Any]
    names: Tuple[str, ...] = ()
    check: Optional[Callable[[Any], None]] = None

    def __post_init__(self):
        if isinstance(self.names, str):
            self.names = (self.names,)


class CliError(ValueError):
    """A CLI call that exited 2 with ``patchbench: error: ...`` (the CLI's user-error contract)."""


def run_case(case: Case) -> str:
    """Run one case; returns ``"raised"`` or ``"ok"``, raises ``AssertionError`` on a failure."""
    try:
        out = case.call()
    except ALLOWED as e:
        msg = str(e).lower()
        assert msg.strip(), f"{case.id}: {type(e).__name__} with an empty message"
        assert not case.names or any(n.lower() in msg for n in case.names), (
            f"{case.id}: {type(e).__name__}({e!s}) does not name any of {case.names}")
        return "raised"
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 - that is the point
        raise AssertionError(f"{case.id}: obscure crash {type(e).__name__}: {e}") from e
    assert case.check is not None, f"{case.id}: the call returned {_short(out)} without complaint"
    case.check(out)
    return "ok"


def _short(x) -> str:
    s = repr(x)
    return s if len(s) < 120 else s[:117] + "..."


def cli(argv: Sequence[str]):
    """Run ``patchbench ARGV``; a user error (exit 2 with one ``patchbench: error:`` line and no
    traceback) is raised as :class:`CliError` so :func:`run_case` checks its message. Other exit
    codes are returned (0 = it ran)."""
    from patchbench.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except SystemExit as e:     # argparse's own usage errors exit 2 too
            code = e.code if isinstance(e.code, int) else 2
    text = err.getvalue()
    assert "Traceback" not in text, f"patchbench {' '.join(argv)} printed a traceback:\n{text}"
    if code == 2:
        raise CliError(text)
    return code


# ---- standard malformed values, so tables stay short -------------------------------------------
NAN, INF = math.nan, math.inf
NOT_NUMBERS = ("x", None, [1.0], True)
BAD_POSITIVE = (0, -1, -0.5, NAN, INF, -INF) + NOT_NUMBERS          # for "> 0" parameters
BAD_NONNEGATIVE = (-1, -1e-3, NAN, INF, -INF) + NOT_NUMBERS         # for ">= 0" parameters
BAD_FRACTION = (-0.1, 1.5, NAN, INF) + NOT_NUMBERS                  # for [0, 1] parameters
BAD_COUNT = (0, -1, 2.5, NAN, INF, "3", None, True)                 # for integer counts >= 1
BAD_SEEDS = ("x", -1, 2 ** 64, 1.5, [0], NAN)                        # seeds


def param_cases(prefix: str, build: Callable[..., Any], param: str, values: Iterable,
                call: Optional[Callable[[Any], Any]] = None, names: Tuple[str, ...] = ()) -> List[Case]:
    """One case per bad value of ``param``: ``build(**{param: v})`` (then ``call(obj)`` if given)
    must raise naming ``param`` (or one of ``names``)."""
    cases = []
    for v in values:
        def f(v=v):
            obj = build(**{param: v})
            return obj if call is None else call(obj)
        cases.append(Case(f"{prefix}.{param}={v!r}", f, names or (param,)))
    return cases


def all_cases() -> List[Case]:
    """Every case of every area module in this package."""
    cases: List[Case] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        cases.extend(getattr(mod, "CASES", []))
    return cases
