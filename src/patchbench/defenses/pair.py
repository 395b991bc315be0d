"""PAIR and MAEDefense: purify an image by reconstructing it with a masked autoencoder.

**PAIR** (Pre-denoising Augmented Image Retrieval; ACM MM 2024, §4.2): cut the image into ``s×s``
tokens and draw a binary mask (Step 1, eqs. 5–6, mask ratio α = 0.5); the generator ``G`` (a masked
autoencoder, :class:`~patchbench.models.mae.MaskedAutoencoder`) reconstructs the image from the
visible tokens (Step 2, eqs. 7–12); a second pass runs ``G`` again *on the reconstruction* with the
inverted mask (Step 3, eq. 13). Every output pixel is then a decoder prediction, and every token was
predicted in a pass where its own content was hidden, so no input pixel reaches the output as it
was: the pixels masked in the first pass are discarded outright (the output does not depend on
them at all), and the others reach it only through what the decoder generated from them.

The paper's adaptive attacker is EOT over fresh masks with ``h_adv = 7`` draws (§3.2, eq. 4), hence
``eot_samples = 7``. Options for the choices where the paper and the authors' code differ, or that
Table 3's ablations vary (defaults = the paper):

* ``passes``: 2 (§4.2 Step 3, the paper and the authors' code) or 1 (Step 2 only).
* ``mask``: ``"random"`` (a fresh mask per call, eq. 6), ``"fixed"`` (one mask drawn once from
  ``mask_seed``, the same for every image and call — Table 3, "fixed mask") or ``"none"`` (no token
  masked, one pass — Table 3, "reconstruction").
* ``sampling``: ``"bernoulli"`` (eq. 6: each token masked with probability α) or ``"exact"``
  (exactly ``round(α·L)`` tokens, the authors' code's shuffled halves).
* ``gradient``: ``"exact"`` (default; autograd through both passes, masks held fixed — the strongest
  white-box gradient) or ``"bpda-identity"`` (BPDA through the reconstruction: forward PAIR,
  backward the identity; Athalye et al. 2018, §4.1).

The authors evaluate with one stochastic pass per image, applied to the queries and the gallery
alike; a deployed ``PAIR`` draws one mask per image per call, which is that.

**MAEDefense** (Lyu et al., APSIPA ASC 2023, as PAIR's baseline, §2.2 and §5.1): the same masked
autoencoder without the semantic training. The image is reconstructed from complementary masks, both
applied to the *input* (each token is taken from the pass in which it was hidden), and the
reconstruction is blended with the input: ``(reconstruction + x) / 2`` (``weight = 0.5``). PAIR's
authors replace MAEDefense's uniform masks by random ones "to enhance its defense" (§5.1):
``mask="random"`` is that variant (default), ``"fixed"`` a fixed mask.

Both defenses are built from a checkpoint written by :func:`patchbench.models.mae.save_mae`
(``patchbench train pair``) or take a model object.

Example::

    pair = PAIR.load("runs/pair/pair_final.pt")   # or build("pair", ctx, checkpoint="@pair")
    x_pure = pair(x_adv)                                    # N×3×64×64 in [0, 1], a fresh mask
    codes = hasher.codes(pair(x_adv))                       # the defended query's hash code
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from .._validation import (check_choice, check_fraction, check_images, check_int,
                           check_positive_int, check_seed)
from ..models.mae import check_token_mask, fixed_token_mask
from .base import Defense, bpda, register

MASKS = ("random", "fixed", "none")
_GRADIENTS = ("exact", "bpda-identity")
#: asset name → file in patchbench/assets (shipped once trained: see training/pair.py)
_ASSETS = {"pair_fmnist_objects": "pair_fmnist_objects.pt",
           "mae_fmnist_objects": "mae_fmnist_objects.pt"}


def _check_mae(model) -> nn.Module:
    """A masked autoencoder: an ``nn.Module`` with ``reconstruct(x, masked)``, ``num_tokens``,
    ``image_size``, ``channels`` and ``pixel_mask(masked)`` (e.g. ``MaskedAutoencoder``)."""
    if isinstance(model, (str, os.PathLike)):
        raise TypeError("model: got a path; use PAIR.load(path) / MAEDefense.load(path) instead")
    missing = [a for a in ("reconstruct", "num_tokens", "image_size", "channels", "pixel_mask")
               if not hasattr(model, a)]
    if not isinstance(model, nn.Module) or missing:
        raise TypeError(f"model: expected a masked autoencoder (patchbench.models.mae."
                        f"MaskedAutoencoder, or an nn.Module with reconstruct, num_tokens, "
                        f"image_size, channels and pixel_mask), got {type(model).__name__}"
                        + (f" without {', '.join(missing)}" if isinstance(model, nn.Module)
                           else ""))
    return model


class _MaskedReconstruction(Defense):
    """What PAIR and MAEDefense share: the masked autoencoder, the mask draws, the gradient rule,
    the input checks and checkpoint loading. Subclasses implement ``_purify_masked(x, masked)``."""

    gradient = "exact"
    randomized = True
    eot_samples = 7
    _masks = MASKS
    _saved = ("mask", "mask_ratio", "sampling", "mask_seed")

    def __init__(self, model: nn.Module, mask: str = "random", mask_ratio: float = 0.5,
                 sampling: str = "bernoulli", gradient: str = "exact", eot_samples: int = 7,
                 seed: Optional[int] = None, mask_seed: int = 0):
        super().__init__()
        self.mae = _check_mae(model)
        self.mask = check_choice(mask, "mask", self._masks)
        self.mask_ratio = check_fraction(mask_ratio, "mask_ratio")
        self.sampling = check_choice(sampling, "sampling", ("bernoulli", "exact"))
        self.gradient = check_choice(gradient, "gradient", _GRADIENTS)
        self.randomized = self.mask == "random"
        self.eot_samples = check_positive_int(eot_samples, "eot_samples") if self.randomized else 1
        self.seed = None if seed is None else check_seed(seed, "seed")
        self._generator = None if seed is None else torch.Generator().manual_seed(self.seed)
        self.mask_seed = check_seed(mask_seed, "mask_seed")
        fixed = fixed_token_mask(self.mae.num_tokens, self.mask_ratio, self.mask_seed,
                                 self.sampling)
        self.register_buffer("fixed_mask", fixed, persistent=False)

    # ------------------------------------------------------------------ masks
    def sample_masks(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """The first-pass token masks of ``n`` images, bool ``n×L`` on the CPU (True = masked).

        ``mask="random"``: fresh draws from ``generator`` (default: the defense's own seeded
        generator, else torch's global one); ``"fixed"``: the fixed mask; ``"none"``: all False."""
        n = check_positive_int(n, "n")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {generator!r}")
        return self._draw(n, generator)

    def _draw(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        if self.mask == "none":
            return torch.zeros(n, self.mae.num_tokens, dtype=torch.bool)
        if self.mask == "fixed":
            return self.fixed_mask.cpu().expand(n, -1)
        from ..models.mae import _random_token_mask
        return _random_token_mask(n, self.mae.num_tokens, self.mask_ratio,
                                  generator if generator is not None else self._generator,
                                  self.sampling)

    # ------------------------------------------------------------------ purification
    def _check_size(self, x: Tensor) -> None:
        h, w = self.mae.image_size
        who = type(self).__name__
        if x.shape[1] != self.mae.channels:
            raise ValueError(f"{who} input x: the masked autoencoder takes {self.mae.channels} "
                             f"channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"{who} input x: the masked autoencoder was trained on {h}×{w} "
                             f"images, got {x.shape[-2]}×{x.shape[-1]}; resize the images or "
                             f"train one for this size")

    def purify(self, x: Tensor) -> Tensor:
        self._check_size(x)
        out = self._purify_masked(x, self._draw(x.shape[0]).to(x.device))
        return bpda(out, x) if self.gradient == "bpda-identity" else out

    def apply(self, x: Tensor, masked: Tensor) -> Tensor:
        """Purify ``x`` with the given first-pass token mask ``masked`` (bool ``N×L`` or ``L``),
        as :meth:`sample_masks` returns (galleries, replayed draws). Follows ``gradient``."""
        x = check_images(x, f"{type(self).__name__}.apply input x")
        self._check_size(x)
        masked = check_token_mask(masked, x.shape[0], self.mae.num_tokens).to(x.device)
        if self.mask == "none" and bool(masked.any()):
            raise ValueError("masked: this defense reconstructs without a mask (mask='none'), got "
                             "a mask with masked tokens")
        out = self._purify_masked(x, masked)
        return bpda(out, x) if self.gradient == "bpda-identity" else out

    def _purify_masked(self, x: Tensor, masked: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"mask={self.mask!r}, mask_ratio={self.mask_ratio}, sampling={self.sampling!r}, "
                f"gradient={self.gradient!r}, eot_samples={self.eot_samples}")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_context(cls, ctx, checkpoint=None, **options) -> "_MaskedReconstruction":
        """Load ``checkpoint`` — a path, an artifact reference ``"@NAME"`` (``ctx.artifacts``) or an
        asset name — onto ``ctx.device``, checked against ``ctx.image_size`` / ``ctx.channels``;
        ``options`` override the settings saved with it. Without a checkpoint, ``model=`` (a
        masked autoencoder object) builds the defense directly."""
        if checkpoint is None:
            if "model" not in options:
                raise ValueError(f"checkpoint: {cls.name!r} needs a trained masked autoencoder: "
                                 f"checkpoint=PATH, '@ARTIFACT' (one of the context's artifacts) "
                                 f"or an asset name ({', '.join(_ASSETS)}), or model=MODEL")
            model = _check_mae(options["model"])
            if ctx.image_size is not None and tuple(model.image_size) != tuple(ctx.image_size):
                (h, w), (ch, cw) = model.image_size, ctx.image_size
                raise ValueError(f"model: built for {h}×{w} images, the context's are {ch}×{cw}")
            return super().from_context(ctx, **options)
        if "model" in options:
            raise TypeError(f"defense {cls.name!r}: give checkpoint= or model=, not both")
        return cls.load(ctx.resolve(checkpoint, "checkpoint"), device=ctx.device,
                        image_size=ctx.image_size, channels=ctx.channels, **options)

    @classmethod
    def load(cls, path, device="cpu", image_size=None, channels: Optional[int] = None,
             **overrides) -> "_MaskedReconstruction":
        """The defense from a :func:`~patchbench.models.mae.save_mae` checkpoint (or an asset name),
        with the settings it was trained for unless ``overrides`` replace them; frozen, eval mode.

        Raises ``FileNotFoundError`` (missing file or an asset not shipped), ``ValueError`` (not a
        masked-autoencoder checkpoint, or one for another image size / channel count), ``TypeError``
        (an unknown override)."""
        from .._registry import check_keywords
        from ..models.mae import load_mae
        check_keywords(cls, overrides, f"defense {cls.name!r}")
        if "model" in overrides:
            raise TypeError(f"{cls.__name__}.load: model= is given by the checkpoint")
        if isinstance(path, str) and path in _ASSETS:
            path = Path(__file__).resolve().parent.parent / "assets" / _ASSETS[path]
            if not path.is_file():
                raise FileNotFoundError(f"asset {path.name} is not shipped in this installation; "
                                        f"train it with `patchbench train pair` and pass its path")
        model, settings, _ = load_mae(path, device=device, image_size=image_size, channels=channels)
        kw = {k: settings[k] for k in cls._saved if k in settings}
        if kw.get("mask") not in cls._masks:
            kw.pop("mask", None)
        try:
            cls(model, **kw)                                   # the file's own settings
        except (TypeError, ValueError, LookupError) as e:
            raise ValueError(f"{path}: invalid saved {cls.name} setting: {e}") from e
        kw.update(overrides)
        return cls(model.requires_grad_(False), **kw).to(device).eval()


@register("pair")
class PAIR(_MaskedReconstruction):
    """PAIR (ACM MM 2024, §4.2): random-mask reconstruction, then a second pass with the inverted
    mask on the reconstruction (eq. 13), so no output pixel is an input pixel.

    Args:
        model: the generator, a :class:`~patchbench.models.mae.MaskedAutoencoder` (trained by
            ``patchbench train pair``; checkpoints load with :meth:`load`).
        mask: ``"random"`` (default, eq. 6), ``"fixed"`` or ``"none"`` (Table 3 ablations).
        mask_ratio: α, the masked fraction, in (0, 1). Default 0.5 (§4.2, §5.1).
        passes: 2 (Step 3) or 1; None (default) = 2, or 1 for ``mask="none"`` (no inverted mask).
        sampling: ``"bernoulli"`` (default, eq. 6) or ``"exact"`` (the authors' code).
        gradient: ``"exact"`` (default, through both passes) or ``"bpda-identity"``.
        eot_samples: draws an adaptive attacker averages (h_adv, eq. 4). Default 7.
        seed: seed of the defense's own mask generator (None = torch's global generator).
        mask_seed: seed of the fixed mask (``mask="fixed"``). Default 0.

    Shapes: ``N×C×H×W`` in [0, 1] at the model's image size → the same.
    """

    name = "pair"
    def __init__(self, model: nn.Module, mask: str = "random", mask_ratio: float = 0.5,
                 passes: Optional[int] = None, sampling: str = "bernoulli", gradient: str = "exact",
                 eot_samples: int = 7, seed: Optional[int] = None, mask_seed: int = 0):
        super().__init__(model, mask, mask_ratio, sampling, gradient, eot_samples, seed, mask_seed)
        if passes is None:
            passes = 1 if self.mask == "none" else 2
        self.passes = check_int(passes, "passes", minimum=1, maximum=2)
        if self.mask == "none" and self.passes == 2:
            raise ValueError("passes: mask='none' reconstructs every token from the full image, so "
                             "there is no inverted mask for a second pass; use passes=1")

    def _purify_masked(self, x: Tensor, masked: Tensor) -> Tensor:
        if self.mask == "none":
            return self.mae.reconstruct(x, None)
        y = self.mae.reconstruct(x, masked)           # Step 2 (eqs. 7–12)
        if self.passes == 2:
            y = self.mae.reconstruct(y, ~masked)      # Step 3: inverted mask (eq. 13), on x'
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", passes={self.passes}"


@register("mae-defense")
class MAEDefense(_MaskedReconstruction):
    """MAEDefense (Lyu et al. 2023) as PAIR's baseline (§2.2, §5.1): reconstruct each token from a
    mask that hides it — complementary masks ``M`` and ``¬M``, both on the input — and blend:
    ``weight · reconstruction + (1 − weight) · x``.

    Args:
        model: a masked autoencoder without semantic training (stage 1 of ``patchbench train
            pair``: ``mae_pretrained.pt``).
        mask: ``"random"`` (default: PAIR's variant, §5.1) or ``"fixed"``.
        mask_ratio: the fraction of tokens hidden by the first mask. Default 0.5.
        weight: the reconstruction's share of the output, in (0, 1). Default 0.5: (rec + x) / 2.
        sampling, gradient, eot_samples, seed, mask_seed: as for :class:`PAIR`.
    """

    name = "mae-defense"
    _masks = ("random", "fixed")
    _saved = ("mask_ratio", "sampling")

    def __init__(self, model: nn.Module, mask: str = "random", mask_ratio: float = 0.5,
                 weight: float = 0.5, sampling: str = "bernoulli", gradient: str = "exact",
                 eot_samples: int = 7, seed: Optional[int] = None, mask_seed: int = 0):
        super().__init__(model, mask, mask_ratio, sampling, gradient, eot_samples, seed, mask_seed)
        self.weight = check_fraction(weight, "weight")

    def _purify_masked(self, x: Tensor, masked: Tensor) -> Tensor:
        first = self.mae.reconstruct(x, masked)       # predicts the tokens M hides
        second = self.mae.reconstruct(x, ~masked)     # predicts the others
        m = self.mae.pixel_mask(masked).to(first)
        rec = first * m + second * (1 - m)
        return self.weight * rec + (1 - self.weight) * x

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight={self.weight}"
