"""What every patch attack returns, and the small base class they share.

Attacks follow scikit-learn's split: the constructor only stores hyper-parameters, ``run`` does the
work and validates its inputs once.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor

from .._registry import Registry


@dataclass
class AttackResult:
    """Outcome of one attack run.

    Attributes:
        x_adv: adversarial images ``N×C×H×W`` in [0, 1]; pixels outside ``mask`` equal the input's.
        patch: the optimised patch: ``C×h×w`` for a universal patch, ``N×C×H×W`` (full-size, only
            meaningful inside ``mask``) for per-image attacks, or ``None``.
        mask: ``N×1×H×W`` float in [0, 1]: where the patch lies on each image (1 = patch pixel).
        success: ``N`` bool: untargeted — prediction differs from the label; targeted — prediction
            equals the target.
        history: mean loss per iteration (or per epoch for universal attacks), for plots and sanity
            checks.
        info: anything else worth keeping (targets, restarts used, per-sample best loss, ...).
    """

    x_adv: Tensor
    patch: Optional[Tensor]
    mask: Tensor
    success: Tensor
    history: List[float] = field(default_factory=list)
    info: Dict[str, object] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else float("nan")


class PatchAttack(abc.ABC):
    """Base class: subclasses implement ``run(model, x, y, threat, *, target=None, generator=None)``."""

    name: str = "attack"

    @abc.abstractmethod
    def run(self, model, x: Tensor, y: Tensor, threat, *, target: Optional[Tensor] = None,
            generator: Optional[torch.Generator] = None) -> AttackResult:
        """Attack ``model`` on images ``x`` (labels ``y``) under ``threat``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


_ATTACKS = Registry("attack")


def register(name: str):
    """Class decorator: make an attack available as ``patchbench.attacks.get(name)``."""
    return _ATTACKS.register(name)


def get(name: str, **kwargs) -> PatchAttack:
    """Build a registered attack by name, e.g. ``get("masked-pgd", steps=100)``."""
    return _ATTACKS.get(name, **kwargs)


def names() -> List[str]:
    """Names of all registered attacks."""
    return _ATTACKS.names()
