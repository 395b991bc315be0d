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

import numbers
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .._registry import Registry, check_keywords
from ..models.base import predict_in_batches
from .._validation import (check_bool, check_choice, check_images, check_model_input, check_number,
                           check_positive, check_positive_int)

GRADIENTS = ("exact", "bpda-identity", "bpda-straight-through", "bpda-sigmoid", "bpda-constant",
             "bpda-surrogate")


def bpda(forward_value: Tensor, surrogate: Tensor) -> Tensor:
    """Forward ``forward_value``, backward through ``surrogate`` (Athalye et al. 2018, §4.1).

    Both tensors have the same shape; ``forward_value`` is usually computed without autograd (PIL
    JPEG) and ``surrogate`` is the differentiable approximation ``h(x)``. With ``surrogate = x`` this is
    BPDA with the identity. Only types and shapes are checked (no pass over the values): defenses
    call it inside attack loops.
    """
    for name, t in (("forward_value", forward_value), ("surrogate", surrogate)):
        if not isinstance(t, Tensor):
            raise TypeError(f"bpda: {name} must be a torch.Tensor, got {type(t).__name__}")
    if forward_value.shape != surrogate.shape:
        raise ValueError(f"bpda: forward value {tuple(forward_value.shape)} and surrogate "
                         f"{tuple(surrogate.shape)} must have the same shape")
    return surrogate + (forward_value.detach() - surrogate).detach()


def binarize(p: Tensor, threshold: float = 0.5, mode: str = "bpda-sigmoid",
             temperature: float = 0.05) -> Tensor:
    """Hard threshold ``1[p ≥ threshold]`` whose backward pass follows ``mode``.

    Args:
        p: any float tensor (e.g. a per-pixel patch probability ``N×1×H×W``).
        threshold: the binarisation threshold (PatchZero's ε_p = 0.5, §4).
        mode: ``"bpda-sigmoid"`` — gradient of ``σ((p − threshold)/temperature)`` (PatchZero §3.3);
            ``"bpda-straight-through"`` — gradient of ``p`` (identity); ``"exact"`` — zero gradient
            (the true derivative of a step function almost everywhere).
        temperature: width of the sigmoid (only for ``"bpda-sigmoid"``).

    Returns: a float tensor of exact 0/1 values, shaped like ``p``.

    Raises ``TypeError`` for a non-tensor / non-float ``p``, ``ValueError`` for a non-finite
    ``threshold`` or a ``temperature`` that is not a finite number > 0, ``LookupError`` for an
    unknown ``mode``. The values of ``p`` are not scanned.
    """
    if not isinstance(p, Tensor):
        raise TypeError(f"binarize: p must be a torch.Tensor, got {type(p).__name__}")
    if not p.is_floating_point():
        raise TypeError(f"binarize: p must be a floating-point tensor (probabilities), got {p.dtype}")
    return _binarize(p, check_number(threshold, "threshold"),
                     check_choice(mode, "mode", _BINARIZE_MODES),
                     check_positive(temperature, "temperature"))


def _binarize(p: Tensor, threshold: float, mode: str, temperature: float) -> Tensor:
    """:func:`binarize` on validated arguments (PatchZero's per-call path)."""
    hard = (p >= threshold).to(p.dtype)
    if mode == "exact":
        return hard.detach()
    if mode == "bpda-straight-through":
        return bpda(hard, p)
    return bpda(hard, torch.sigmoid((p - threshold) / temperature))


_BINARIZE_MODES = ("bpda-sigmoid", "bpda-straight-through", "exact")


def check_classifier(model, name: str = "model") -> nn.Module:
    """A classifier module (``nn.Module``), as the ``model`` argument of ``classify``/``certify``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name}: expected an nn.Module classifier (logits N×num_classes), got "
                        f"{type(model).__name__}")
    return model


def check_fill_values(fill, name: str = "fill", channels: Optional[int] = None) -> Tuple[float, ...]:
    """A fill colour in [0, 1]: one number, or one per channel (sequence, array or 1-D tensor);
    returned as a tuple of floats."""
    if isinstance(fill, (str, bytes)) or fill is None or isinstance(fill, bool):
        raise TypeError(f"{name}: expected a number or per-channel numbers in [0, 1], got {fill!r}")
    if isinstance(fill, Tensor) or type(fill).__name__ == "ndarray":
        if fill.ndim > 1:
            raise ValueError(f"{name}: expected a number or a 1-D sequence of per-channel values, "
                             f"got shape {tuple(fill.shape)}")
        vals = [fill.item()] if fill.ndim == 0 else list(fill.tolist())
    elif isinstance(fill, numbers.Real):
        vals = [fill]
    elif isinstance(fill, (list, tuple)):
        vals = list(fill)
    else:
        raise TypeError(f"{name}: expected a number or per-channel numbers in [0, 1], got "
                        f"{type(fill).__name__}")
    if not vals:
        raise ValueError(f"{name}: expected at least one value, got an empty sequence")
    out = tuple(check_number(v, f"{name}[{i}]" if len(vals) > 1 else name, 0.0, 1.0)
                for i, v in enumerate(vals))
    if channels is not None and len(out) not in (1, channels):
        want = "1 value" if channels == 1 else f"1 or {channels} values (one per channel)"
        raise ValueError(f"{name}: expected {want} for {channels}-channel images, got {len(out)}")
    return out


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
    uses_true_mask: bool = False

    @classmethod
    def from_context(cls, ctx, **options) -> "Defense":
        """Build from a :class:`~patchbench.defenses.BuildContext` (the model, image size, fill,
        patch area, device and artifacts of an experiment) and explicit ``options``: the default
        ignores the context and calls ``cls(**options)``; defenses that need the model, the image
        size or a checkpoint override it. Unknown ``options`` are a ``TypeError`` naming them."""
        check_keywords(cls, options, f"defense {cls.name!r}")
        return cls(**options)

    def with_mask(self, mask: Optional[Tensor]) -> "Defense":
        """This defense when told where the patch is (``mask`` ``N×1×H×W``, 1 = patch pixel;
        ``None`` = no patch, clean images). Real defenses are blind to it and return ``self``; the
        GT-mask oracle (``uses_true_mask``) returns a copy that repaints ``mask``."""
        return self

    def for_result(self, result) -> "Defense":
        """This defense as it applies to the images of ``result`` (an ``AttackResult``; ``None`` =
        the clean images): :meth:`with_mask` of the result's mask."""
        return self.with_mask(None if result is None else result.mask)

    def forward(self, x: Tensor) -> Tensor:
        """Purify images ``x`` (``N×C×H×W`` in [0, 1]) → ``N×C×H×W`` in [0, 1]."""
        if self.output != "image":
            raise TypeError(f"{type(self).__name__} is a prediction-level defense: it has no "
                            f"purified image; use .classify(model, x) or Defended(model, defense)")
        x = check_images(x, f"{type(self).__name__} input x")
        return self.purify(x)

    def purify(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement purify(x) or classify(model, x)")

    def classify(self, model: nn.Module, x: Tensor) -> Tensor:
        """Scores ``N×num_classes`` of ``model`` on defended ``x``; argmax = the defended label.

        Purifiers return ``model(self(x))``; prediction-level defenses override this.
        """
        return check_classifier(model)(self(x))

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}, randomized={self.randomized}"


class Defended(nn.Module):
    """``model ∘ defense`` as a classifier (or hasher): the target of an adaptive attack.

    Args:
        model: a classifier (``ImageClassifier`` protocol: ``num_classes``, ``class_names``,
            ``input_size``, ``channels``; forward ``N×C×H×W`` in [0,1] → logits) or a hasher (the
            ``Hasher`` protocol of :mod:`patchbench.models.hashing`: ``bits``, ``channels``, optional
            ``centres``; forward → ``N×bits`` real outputs whose signs are the code). A model with
            ``bits`` is a hasher, any other a classifier.
        defense: a :class:`Defense` (a purifier for a hasher: a prediction-level defense has
            class scores and no image to hash).
        eot_samples (int or None, default None → ``defense.eot_samples``): for a randomised defense
            in attack mode, forward returns the mean logits (hasher: the mean pre-sign outputs,
            PAIR eq. (4)) over this many independent draws (Expectation over Transformation,
            Athalye et al. 2018, §4.3).

    Attack mode: ``attack_mode=None`` (default) means "while autograd is recording", i.e. inside an
    attack's gradient step; set ``attack_mode`` to True/False to force it. Outside attack mode one
    draw is used, as a deployed defense would.

    Prediction-level defenses (``defense.output == "prediction"``, e.g. PatchCleanser): forward
    returns ``defense.classify(model, x)``; in attack mode the gradient is that of ``model(x)``
    (BPDA with the identity on the input — the defense's masking/voting is treated as absent in the
    backward pass), since masking-and-voting has no useful gradient of its own.

    Shapes: ``x`` ``N×C×H×W`` in [0, 1] → logits ``N×num_classes`` (hasher: ``N×bits``).

    Example::

        target = Defended(model, LGS())
        res = pb.attacks.get("masked-pgd").run(target, x, y, threat)   # adaptive attack
    """

    def __init__(self, model: nn.Module, defense: Defense, eot_samples: Optional[int] = None):
        super().__init__()
        if not isinstance(defense, Defense):
            raise TypeError(f"Defended: defense must be a patchbench Defense, got "
                            f"{type(defense).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"Defended: model must be an nn.Module classifier, got "
                            f"{type(model).__name__}")
        self.hashing = hasattr(model, "bits")
        for attr in (("bits",) if self.hashing else ("num_classes",)) + ("channels",):
            if not hasattr(model, attr):
                raise TypeError(f"Defended: model must be a classifier with .{attr} "
                                f"(wrap raw networks in models.base.ImageClassifier)"
                                if not self.hashing else
                                f"Defended: model must be a hasher with .{attr}")
        if self.hashing and defense.output != "image":
            raise TypeError(f"Defended: {type(defense).__name__} is a prediction-level defense (it "
                            f"returns class scores); a hasher can only sit behind a purifier")
        self.model = model
        self.defense = defense
        self.eot_samples = check_positive_int(
            defense.eot_samples if eot_samples is None else eot_samples, "eot_samples")
        self.attack_mode = None
        if self.hashing:
            self.bits = int(model.bits)
        else:
            self.num_classes = model.num_classes
            self.class_names = list(getattr(model, "class_names", range(model.num_classes)))
        self.input_size = getattr(model, "input_size", None)
        self.channels = model.channels
        self.name = f"{getattr(model, 'name', 'model')}+{getattr(defense, 'name', 'defense')}"

    @property
    def centres(self) -> Optional[Tensor]:
        """A hasher's class centres (``K×bits`` ±1, CSQ), read from the model; ``None`` if none."""
        return getattr(self.model, "centres", None) if self.hashing else None

    @property
    def attack_mode(self) -> Optional[bool]:
        """None (attack mode while autograd records), or True/False to force it."""
        return self._attack_mode

    @attack_mode.setter
    def attack_mode(self, value: Optional[bool]) -> None:
        self._attack_mode = None if value is None else check_bool(value, "attack_mode")

    def _attacking(self) -> bool:
        return torch.is_grad_enabled() if self._attack_mode is None else self._attack_mode

    def _once(self, x: Tensor) -> Tensor:
        if self.defense.output == "prediction":
            scores = self.defense.classify(self.model, x)
            if not self._attacking():
                return scores
            return bpda(scores, self.model(x))
        return self.model(self.defense.purify(x))   # x was validated once in forward

    def forward(self, x: Tensor) -> Tensor:
        # check_model_input: inside trusted_inputs() (an attack's loop) the range scan is skipped
        dtype = x.dtype if isinstance(x, Tensor) and x.is_floating_point() else torch.float32
        x = check_model_input(x, "Defended input x", dtype=dtype)
        if x.shape[1] != self.channels:
            raise ValueError(f"Defended input x: the model takes {self.channels} channels, got "
                             f"{x.shape[1]} (shape {tuple(x.shape)}; images are N×C×H×W)")
        if x.shape[0] == 0 or x.shape[-1] == 0 or x.shape[-2] == 0:
            raise ValueError(f"Defended input x: empty batch or image (shape {tuple(x.shape)})")
        draws = self.eot_samples if (self.defense.randomized and self._attacking()) else 1
        out = self._once(x)
        for _ in range(draws - 1):
            out = out + self._once(x)
        return out / draws if draws > 1 else out

    def predict(self, x: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """Return ``(labels, confidences)`` of the defended model (one draw, eval mode)."""
        if self.hashing:
            raise TypeError("Defended.predict: the model is a hasher (no class labels); use "
                            ".codes(x)")
        x = check_images(x, "x", channels=self.channels)
        return predict_in_batches(self, x, check_positive_int(batch_size, "batch_size"))

    def codes(self, x: Tensor, batch_size: int = 64) -> Tensor:
        """Hash codes of the defended hasher, ``N×bits`` ±1 floats (``sign``, 0 → +1), one draw of
        a randomised defense per image (as deployed), eval mode, no gradients."""
        if not self.hashing:
            raise TypeError("Defended.codes: the model is a classifier (no hash codes); use "
                            ".predict(x)")
        from .._io import predict_batched
        from ..models.hashing import sign_codes
        x = check_images(x, "x", channels=self.channels)
        return predict_batched(self, x, check_positive_int(batch_size, "batch_size"),
                               reduce=sign_codes)


_DEFENSES = Registry("defense")


def _check_gradient(cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Defense)):
        raise TypeError(f"register: expected a Defense subclass, got {cls!r}")
    check_choice(cls.gradient, f"{cls.__name__}.gradient", GRADIENTS)


def register(name: str):
    """Class decorator: make a defense available as ``patchbench.defenses.get(name)``."""
    return _DEFENSES.register(name, check=_check_gradient)


def get(name: str, **kwargs) -> Defense:
    """Build a registered defense by name, e.g. ``get("lgs", smoothing_factor=2.3)``."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a defense name such as 'lgs', got {name!r}")
    return _DEFENSES.get(name, **kwargs)


def names() -> List[str]:
    """Names of all registered defenses."""
    return _DEFENSES.names()
