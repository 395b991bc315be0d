"""What a task is, and the registry that finds tasks by name.

A *task* says what a model's output means and what "attacked" means for it (docs/architecture.md, "The
data path"): the objective an attack maximises (a per-sample loss and a per-sample success flag, from
one forward pass), and the metrics of one evaluation cell. Attacks keep their loops (``sign_ascent``,
``apgd``, the universal loop take a loss function) and take that function from their task, so the
same loop serves classification today and retrieval later.

``get(name)`` returns the (stateless) task registered under ``name``; ``names()`` lists them::

    >>> from patchbench import tasks
    >>> tasks.names()
    ['classification', 'face-detection', 'retrieval']
    >>> loss, success = tasks.get("classification").objective(logits, y, None, loss="dlr")
"""
from __future__ import annotations

import abc
from typing import Dict, List, Tuple

from torch import Tensor

from .._registry import Registry


class Task(abc.ABC):
    """Base class of a task (one module each in ``patchbench.tasks``).

    Attributes:
        name: the registered name (set by :func:`register`).
        outputs: what the model returns, in words (e.g. ``"N×K logits"``), for error messages.
    """

    name: str = "task"
    outputs: str = "model outputs"

    @abc.abstractmethod
    def objective(self, outputs, y, target=None, **options) -> Tuple[Tensor, Tensor]:
        """``(loss to maximise per sample, success per sample)`` from one forward pass.

        Inner-loop helper: attacks call it every iteration, so its inputs are not validated here
        (the attack validated images, labels and targets once, at entry)."""

    @abc.abstractmethod
    def cell_metrics(self, *args, **kwargs) -> Dict[str, object]:
        """The flat, JSON-able metrics of one evaluation cell (see each task)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_TASKS = Registry("task")
_INSTANCES: Dict[type, Task] = {}


def register(name: str):
    """Class decorator: make a task available as ``patchbench.tasks.get(name)``."""
    def check(cls):
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register: expected a Task subclass, got {cls!r}")
    return _TASKS.register(name, check=check)


def get(name) -> Task:
    """The task registered under ``name`` (``"classification"``, ``"face-detection"``); a
    :class:`Task` instance is returned as is. ``LookupError`` listing the tasks for an unknown name,
    ``TypeError`` for anything but a string or a Task."""
    if isinstance(name, Task):
        return name
    if not isinstance(name, str):
        raise TypeError(f"task: expected a task name such as 'classification' or a Task, got "
                        f"{name!r}")
    cls = _TASKS.lookup(name)
    if cls not in _INSTANCES:
        _INSTANCES[cls] = cls()
    return _INSTANCES[cls]


def names() -> List[str]:
    """Names of all registered tasks."""
    return _TASKS.names()
