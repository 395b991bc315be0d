"""What every patch attack returns, and the small base class they share.

Attacks follow scikit-learn's split: the constructor only stores hyper-parameters (validated, so
``MaskedCW(l2_weight=inf)`` fails at once, naming ``l2_weight``), ``run`` does the work and validates
its inputs once, at entry; the iterations then run inside ``_validation.trusted_inputs()``.
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
        success: ``N`` bool, true of the returned images: untargeted — the model's prediction on
            ``x_adv`` differs from the label; targeted — it equals the target.
        history: mean loss per iteration (or per epoch for universal attacks), for plots and sanity
            checks.
        info: anything else worth keeping (targets, restarts used, per-sample best loss, ...).
        eligible: ``N`` bool: the images an attack can succeed on — the model classified the clean
            image correctly (targets always differ from the labels: ``run`` refuses target == y).
            ``None`` (a hand-made result) counts every image.

    ``success_rate`` / ``rate`` is the attack success rate of :func:`patchbench.metrics.success_rate`:
    successes among the eligible images, so for ``pred_clean = model(x).argmax(1)`` and
    ``pred_adv = model(res.x_adv).argmax(1)``::

        res.success == (pred_adv != y)                      # (targeted: pred_adv == target)
        res.rate == metrics.success_rate(pred_clean, pred_adv, y, target)
    """

    x_adv: Tensor
    patch: Optional[Tensor]
    mask: Tensor
    success: Tensor
    history: List[float] = field(default_factory=list)
    info: Dict[str, object] = field(default_factory=dict)
    eligible: Optional[Tensor] = None

    @property
    def rate(self):
        """Attack success rate among the eligible images, as a :class:`patchbench.metrics.Rate`
        (``k/n`` with its Wilson interval; ``n == 0`` gives value NaN)."""
        from ..metrics.classification import Rate
        ok = self.success if self.eligible is None else self.success & self.eligible.to(
            self.success.device)
        n = self.success.numel() if self.eligible is None else int(self.eligible.sum())
        return Rate.of(int(ok.sum()), n)

    @property
    def success_rate(self) -> float:
        """``rate.value``: successes / eligible images (NaN when no image is eligible)."""
        return self.rate.value


class PatchAttack(abc.ABC):
    """Base class: subclasses implement ``run(model, x, y, threat, *, target=None, generator=None)``.

    Attributes:
        name: the registered name (set by :func:`register`).
        task: the :mod:`patchbench.tasks` name whose objective the attack optimises (its loss and
            per-sample success) and whose metrics score it. Default ``"classification"``; the
            face-hiding patch is ``"face-detection"``. A subclass or an instance may set another.
        per_image: the attack optimises each image's own patch inside a mask it is given (so the
            mask is known before it runs); ``False`` for universal patches, whose placements are
            drawn while they train.
    """

    name: str = "attack"
    task: str = "classification"
    per_image: bool = True

    def task_objective(self, **options):
        """The task's objective ``f(outputs, y, target) -> (loss to maximise, success)`` with
        ``options`` (e.g. ``loss="dlr"``) bound: resolved once per run, called every iteration."""
        from .. import tasks
        fn = tasks.get(self.task).objective
        if not options:
            return fn
        return lambda outputs, y, target=None: fn(outputs, y, target, **options)

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
    """Build a registered attack by name, e.g. ``get("masked-pgd", steps=100)``.

    Raises ``LookupError`` for an unknown name and ``TypeError`` naming any keyword the attack does
    not take (with the ones it does), e.g. ``steps`` for ``"universal-patch"`` (it has ``epochs``).
    """
    if not isinstance(name, str):
        raise TypeError(f"attack name: expected a string such as 'masked-pgd', got {name!r}")
    return _ATTACKS.get(name, **kwargs)


def names() -> List[str]:
    """Names of all registered attacks."""
    return _ATTACKS.names()
