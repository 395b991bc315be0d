"""Building defenses from an experiment's context: ``build(name, context, **options)``.

Some defenses cannot be built from their options alone: SLGS / WLGS need the classifier whose
saliency guides them, PatchCleanser the image size and the patch size it certifies against, the
GT-mask oracle and PatchCleanser the dataset's mean pixel, PatchZero a trained detector. A
:class:`BuildContext` carries what an experiment knows (the model, image size, channels, fill,
patch area, device and the paths of its trained artifacts), and each defense class takes what it
needs from it in its ``from_context`` classmethod (the default: ``cls(**options)``), so an
experiment file names ``slgs`` or ``patchzero`` and gets a working defense.

Example::

    ctx = BuildContext(model=model, image_size=(28, 28), channels=1, fill=(0.286,), patch_area=0.05,
                       artifacts={"pz-do": "runs/pz/patchzero_stage1.pt"})
    build("slgs", ctx, window=5, overlap=2)
    build("patchcleanser", ctx, k=6)
    build("patchzero", ctx, checkpoint="@pz-do")       # or a path, or an asset name
    build("none", ctx)                                 # → None (undefended)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

from torch import nn

from .._registry import normalize_name
from .._validation import check_device, check_fraction, check_positive_int
from .base import _DEFENSES, Defense, check_fill_values


@dataclass
class BuildContext:
    """What an experiment knows when it builds a defense (every field optional).

    Args:
        model: the defended classifier (SLGS / WLGS compute its saliency).
        image_size: ``(H, W)`` of the images (an int means square).
        channels: image channels.
        fill: the dataset's mean pixel, one value or one per channel, in [0, 1] (GT-mask oracle,
            PatchCleanser).
        patch_area: the threat's patch area, a fraction of the image in (0, 1) (PatchCleanser's
            patch size).
        device: where the defense runs (``"cpu"`` or ``"cuda"``). Default ``"cpu"``.
        artifacts: name → file path of trained artifacts (e.g. a PatchZero detector), referenced
            in options as ``"@name"``.
    """

    model: Optional[nn.Module] = None
    image_size: Optional[Tuple[int, int]] = None
    channels: Optional[int] = None
    fill: Optional[Sequence[float]] = None
    patch_area: Optional[float] = None
    device: str = "cpu"
    artifacts: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.model is not None and not callable(self.model):
            raise TypeError(f"context.model: expected a classifier (nn.Module) or None, got "
                            f"{type(self.model).__name__}")
        if self.image_size is not None:
            hw = self.image_size
            if isinstance(hw, int) and not isinstance(hw, bool):
                hw = (hw, hw)
            if isinstance(hw, (str, bytes)) or not hasattr(hw, "__len__") or len(hw) != 2:
                raise TypeError(f"context.image_size: expected (H, W) in pixels, got "
                                f"{self.image_size!r}")
            self.image_size = tuple(check_positive_int(v, "context.image_size") for v in hw)
        if self.channels is not None:
            self.channels = check_positive_int(self.channels, "context.channels")
        if self.fill is not None:
            self.fill = check_fill_values(self.fill, "context.fill", self.channels)
        if self.patch_area is not None:
            self.patch_area = check_fraction(self.patch_area, "context.patch_area", 0.0, 1.0)
        self.device = str(check_device(self.device, "context.device"))
        if not isinstance(self.artifacts, dict):
            raise TypeError(f"context.artifacts: expected a dict name → file path, got "
                            f"{type(self.artifacts).__name__}")
        for k, v in self.artifacts.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (str, os.PathLike)):
                raise TypeError(f"context.artifacts: expected name → file path strings, got "
                                f"{k!r}: {v!r}")
        self.artifacts = {k: os.fspath(v) for k, v in self.artifacts.items()}

    def require(self, attr: str, who: str, what: str):
        """``getattr(self, attr)``; a ``ValueError`` naming ``context.<attr>`` when it is None."""
        value = getattr(self, attr)
        if value is None:
            raise ValueError(f"context.{attr}: {who} needs {what}; set it in the BuildContext (or "
                             f"pass the option explicitly)")
        return value

    def resolve(self, ref, name: str = "checkpoint"):
        """An artifact reference ``"@NAME"`` → its path in ``artifacts`` (``LookupError`` listing
        the known ones); anything else is returned unchanged."""
        if isinstance(ref, str) and ref.startswith("@"):
            key = ref[1:]
            if key not in self.artifacts:
                known = ", ".join(sorted(self.artifacts)) or "none"
                raise LookupError(f"{name}: unknown artifact {ref!r}; the context has: {known}")
            return self.artifacts[key]
        return ref


def build(name: str, context: Optional[BuildContext] = None, **options) -> Optional[Defense]:
    """The registered defense ``name`` built from ``context`` and ``options``; ``"none"`` → None.

    Raises ``LookupError`` for an unknown name (listing the known ones), ``TypeError`` naming any
    option the defense does not take, ``ValueError`` naming the context field a defense needs but
    the context lacks (e.g. ``context.model`` for SLGS). The defense is moved to
    ``context.device``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a defense name such as 'lgs' or 'none', got {name!r}")
    if context is None:
        context = BuildContext()
    if not isinstance(context, BuildContext):
        raise TypeError(f"context: expected a patchbench.defenses.BuildContext, got "
                        f"{type(context).__name__}")
    if normalize_name(name).strip() == "none":
        if options:
            raise TypeError(f"defense 'none' (undefended) takes no options, got "
                            f"{', '.join(map(repr, options))}")
        return None
    cls = _DEFENSES.lookup(name)
    return cls.from_context(context, **options).to(context.device)
