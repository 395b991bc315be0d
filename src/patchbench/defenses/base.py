"""The defense contract, the gradient rules an adaptive attacker follows, and ``Defended``.

A :class:`Defense` maps images ``N×C×H×W`` in ``[0, 1]`` to images in ``[0, 1]`` (a *purifier*:
LGS, JPEG, PatchZero, the GT-mask oracle) or, for *prediction-level* defenses such as
PatchCleanser, overrides :meth:`Defense.classify` to return class scores directly.

Every defense declares how gradients pass through it (``gradient``), following BPDA
(Athalye et al., ICML 2018, §4.1: use ``f`` in the forward pass and a differentiable ``h ≈ f`` in the
backward pass) as used by PatchZero (Xu et al., WACV 2023, §3.3: the binarisation step is replaced by
a sigmoid in the backward pass):

- ``"exact"``: the forward pass is differentiable and autograd gives its true (sub)gradient.
- ``"bpda-identity"``: backward treats the whole defense as the identity, ``∂T(x)/∂x ≈ I``.
- ``"bpda-straight-through"``: a hard threshold inside the defense passes the gradient of its input
  unchanged (straight-through estimator); the rest is differentiated exactly.
- ``"bpda-sigmoid"``: a hard threshold ``1[p ≥ t]`` is differentiated as ``σ((p − t)/τ)``.
- ``"bpda-constant"``: an expensive data-dependent branch (e.g. a saliency map) is held fixed at its
  forward value in the backward pass; the rest is exact.
- ``"bpda-surrogate"``: the whole transform runs as is forward and is differentiated through a
  differentiable approximation ``h ≈ f`` (e.g. a differentiable JPEG) backward.

``Defended(model, defense)`` is itself a classifier, so any attack run against it is an adaptive
(white-box, BPDA and, for randomised defenses, EOT — Athalye et al. §4.3) attack.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from .._registry import Registry
from ..models.base import predict_in_batches
from .._validation import check_images, check_positive_int

GRADIENTS = ("exact", "bpda-identity", "bpda-straight-through", "bpda-sigmoid", "bpda-constant",
             "bpda-surrogate")


def bpda(forward_value: Tensor, surrogate: Tensor) -> Tensor:
    """Forward ``forward_value``, backward through ``surrogate`` (Athalye et al. 2018, §4.1).

    Both tensors have the same shape; ``forward_value`` is usually computed without autograd (PIL
    JPEG) and ``surrogate`` is the differentiable approximation ``h(x)``. With ``surrogate = x`` this is
    BPDA with the identity.
    """
    if forward_value.shape != surrogate.shape:
        raise ValueError(f"bpda: forward value {tuple(forward_value.shape)} and surrogate "
                         f"{tuple(surrogate.shape)} must have the same shape")
    return surrogate + (forward_value.detach() - surrogate).detach()


def binarize(p: Tensor, threshold: float = 0.5, mode: str = "bpda-sigmoid",
             temperature: float = 0.05) -> Tensor:
    """Hard threshold ``1[p ≥ threshold]`` whose backward pass follows ``mode``.

    Args:
        p: any tensor (e.g. a per-pixel patch probability ``N×1×H×W``).
        threshold: the binarisation threshold (PatchZero's ε_p = 0.5, §4).
        mode: ``"bpda-sigmoid"`` — gradient of ``σ((p − threshold)/temperature)`` (PatchZero §3.3);
            ``"bpda-straight-through"`` — gradient of ``p`` (identity); ``"exact"`` — zero gradient
            (the true derivative of a step function almost everywhere).
        temperature: width of the sigmoid (only for ``"bpda-sigmoid"``).

    Returns: a float tensor of exact 0/1 values, shaped like ``p``.
    """
    hard = (p >= threshold).to(p.dtype)
    if mode == "exact":
        return hard.detach()
    if mode == "bpda-straight-through":
        return bpda(hard, p)
    if mode == "bpda-sigmoid":
        if temperature <= 0:
            raise ValueError(f"binarize: temperature must be > 0, got {temperature}")
        return bpda(hard, torch.sigmoid((p - threshold) / temperature))
    raise ValueError(f"binarize: mode must be 'exact', 'bpda-straight-through' or 'bpda-sigmoid', "
                     f"got {mode!r}")


class Defense(nn.Module):
    """Base class of all defenses.

    Subclasses implement :meth:`purify` (image → image; its backward pass must follow
    ``gradient``), or, for prediction-level defenses (``output = "prediction"``), :meth:`classify`.

    Attributes:
        gradient: one of ``GRADIENTS`` — how an adaptive attacker's gradient passes (see module doc).
        randomized: whether two calls on the same input may differ (then attackers use EOT).
        eot_samples: default number of draws an adaptive attacker averages over (1 if deterministic).
        output: ``"image"`` (a purifier) or ``"prediction"`` (``classify`` returns scores).
    """

    gradient: str = "exact"
    randomized: bool = False
    eot_samples: int = 1
    output: str = "image"
    name: str = "defense"

    def forward(self, x: Tensor) -> Tensor:
        """Purify images ``x`` (``N×C×H×W`` in [0, 1]) → ``N×C×H×W`` in [0, 1]."""
        if self.output != "image":
            raise TypeError(f"{type(self).__name__} is a prediction-level defense: it has no "
                            f"purified image; use .classify(model, x) or Defended(model, defense)")
        x = check_images(x, f"{type(self).__name__} input")
        return self.purify(x)

    def purify(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement purify(x) or classify(model, x)")

    def classify(self, model: nn.Module, x: Tensor) -> Tensor:
        """Scores ``N×num_classes`` of ``model`` on defended ``x``; argmax = the defended label.

        Purifiers return ``model(self(x))``; prediction-level defenses override this.
        """
        return model(self(x))

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}, randomized={self.randomized}"


class Defended(nn.Module):
    """``model ∘ defense`` as a classifier: the target of an adaptive attack.

    Args:
        model: a classifier (``ImageClassifier`` protocol: ``num_classes``, ``class_names``,
            ``input_size``, ``channels``; forward ``N×C×H×W`` in [0,1] → logits).
        defense: a :class:`Defense`.
        eot_samples (int or None, default None → ``defense.eot_samples``): for a randomised defense
            in attack mode, forward returns the mean logits over this many independent draws
            (Expectation over Transformation, Athalye et al. 2018, §4.3).

    Attack mode: ``attack_mode=None`` (default) means "while autograd is recording", i.e. inside an
    attack's gradient step; set ``attack_mode`` to True/False to force it. Outside attack mode one
    draw is used, as a deployed defense would.

    Prediction-level defenses (``defense.output == "prediction"``, e.g. PatchCleanser): forward
    returns ``defense.classify(model, x)``; in attack mode the gradient is that of ``model(x)``
    (BPDA with the identity on the input — the defense's masking/voting is treated as absent in the
    backward pass), since masking-and-voting has no useful gradient of its own.

    Shapes: ``x`` ``N×C×H×W`` in [0, 1] → logits ``N×num_classes``.

    Example::

        target = Defended(model, LGS())
        res = pb.attacks.get("masked-pgd").run(target, x, y, threat)   # adaptive attack
    """

    def __init__(self, model: nn.Module, defense: Defense, eot_samples: Optional[int] = None):
        super().__init__()
        if not isinstance(defense, Defense):
            raise TypeError(f"Defended: expected a patchbench Defense, got {type(defense).__name__}")
        for attr in ("num_classes", "channels"):
            if not hasattr(model, attr):
                raise TypeError(f"Defended: model must be a classifier with .{attr} "
                                f"(wrap raw networks in models.base.ImageClassifier)")
        self.model = model
        self.defense = defense
        self.eot_samples = check_positive_int(
            defense.eot_samples if eot_samples is None else eot_samples, "eot_samples")
        self.attack_mode: Optional[bool] = None
        self.num_classes = model.num_classes
        self.class_names = list(getattr(model, "class_names", range(model.num_classes)))
        self.input_size = getattr(model, "input_size", None)
        self.channels = model.channels
        self.name = f"{getattr(model, 'name', 'model')}+{getattr(defense, 'name', 'defense')}"

    def _attacking(self) -> bool:
        return torch.is_grad_enabled() if self.attack_mode is None else bool(self.attack_mode)

    def _once(self, x: Tensor) -> Tensor:
        if self.defense.output == "prediction":
            scores = self.defense.classify(self.model, x)
            if not self._attacking():
                return scores
            return bpda(scores, self.model(x))
        return self.model(self.defense.purify(x))   # x was validated once in forward

    def forward(self, x: Tensor) -> Tensor:
        x = check_images(x, "Defended input", channels=self.channels)
        draws = self.eot_samples if (self.defense.randomized and self._attacking()) else 1
        out = self._once(x)
        for _ in range(draws - 1):
            out = out + self._once(x)
        return out / draws if draws > 1 else out

    def predict(self, x: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """Return ``(labels, confidences)`` of the defended model (one draw, eval mode)."""
        return predict_in_batches(self, x, batch_size)


_DEFENSES = Registry("defense")


def _check_gradient(cls) -> None:
    if cls.gradient not in GRADIENTS:
        raise ValueError(f"{cls.__name__}.gradient must be one of {GRADIENTS}, got {cls.gradient!r}")


def register(name: str):
    """Class decorator: make a defense available as ``patchbench.defenses.get(name)``."""
    return _DEFENSES.register(name, check=_check_gradient)


def get(name: str, **kwargs) -> Defense:
    """Build a registered defense by name, e.g. ``get("lgs", smoothing_factor=2.3)``."""
    return _DEFENSES.get(name, **kwargs)


def names() -> List[str]:
    """Names of all registered defenses."""
    return _DEFENSES.names()
