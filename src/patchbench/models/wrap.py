"""``wrap(net, ...)``: any ``nn.Module`` that maps normalised images to logits → a patchbench classifier.

patchbench's convention (docs/architecture.md) is that a model takes ``N×C×H×W`` images in [0, 1] and
owns its normalisation and resizing, so attacks never see normalised tensors. :func:`wrap` puts a
user's network behind that convention with :class:`~patchbench.models.base.ImageClassifier`, filling
in what is not given: ImageNet's mean/std, a 224×224 input, the number of classes read from one
forward pass of a dummy image, and class names (ImageNet's for a 1000-class output, ``"0"``, ``"1"``,
... otherwise).

Example::

    import torch.nn as nn
    import patchbench as pb

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5))
    model = pb.models.wrap(net, input_size=64, class_names=["a", "b", "c", "d", "e"])
    labels, conf = model.predict(x)                 # x: N×3×H×W in [0, 1], any H×W
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
from torch import nn

from .base import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier, module_dtype_device

_DEFAULT_SIZE = 224


def _check_stats(values, name: str) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name}: expected one number per channel (e.g. {list(IMAGENET_MEAN)}), got "
                        f"{values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"{name}: expected finite numbers, got {list(values)!r}")
        out.append(float(v))
    if not out:
        raise ValueError(f"{name}: expected one number per channel, got an empty sequence")
    return tuple(out)


def _check_input_size(input_size) -> Optional[tuple]:
    if input_size is None:
        return None
    if isinstance(input_size, numbers.Integral) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    if isinstance(input_size, (str, bytes)) or not hasattr(input_size, "__len__") or \
            len(input_size) != 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                            for s in input_size):
        raise TypeError(f"input_size: expected an int, (height, width) or None, got {input_size!r}")
    if min(input_size) < 1:
        raise ValueError(f"input_size: expected positive sizes, got {tuple(input_size)}")
    return int(input_size[0]), int(input_size[1])


def _probe(net: nn.Module, channels: int, hw: tuple) -> int:
    """The number of logits ``net`` returns for one grey ``1×channels×H×W`` image (eval mode, no
    gradients; the module's train/eval mode is restored)."""
    dtype, device = module_dtype_device(net)
    x = torch.zeros(1, channels, *hw, dtype=dtype, device=device)
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            out = net(x)
    except Exception as e:  # noqa: BLE001 - any failure of the user's forward is reported as such
        raise ValueError(f"net: a forward pass of a dummy input 1×{channels}×{hw[0]}×{hw[1]} failed "
                         f"({type(e).__name__}: {e}); check channels= (from the length of mean) and "
                         f"input_size=") from e
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"net: expected the network to return a logits tensor N×num_classes, got "
                         f"{type(out).__name__} (wrap a network whose forward returns the logits)")
    if out.dim() != 2 or out.shape[0] != 1:
        raise ValueError(f"net: expected logits of shape 1×num_classes for a 1-image batch, got "
                         f"shape {tuple(out.shape)}")
    return int(out.shape[1])


def _class_names(class_names, num_classes: int) -> list:
    if class_names is None:
        if num_classes == 1000:
            from .zoo import imagenet_class_names
            return list(imagenet_class_names())
        return [str(i) for i in range(num_classes)]
    if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__len__"):
        raise TypeError(f"class_names: expected a list of {num_classes} strings, got {class_names!r}")
    names = list(class_names)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"class_names: expected strings, got {[type(n).__name__ for n in names][:5]}")
    if len(names) != num_classes:
        raise ValueError(f"class_names: expected {num_classes} names (one per class), got "
                         f"{len(names)}")
    return names


def wrap(net: nn.Module, num_classes: Optional[int] = None, mean: Sequence[float] = IMAGENET_MEAN,
         std: Sequence[float] = IMAGENET_STD, input_size=_DEFAULT_SIZE,
         class_names: Optional[Sequence[str]] = None, name: str = "wrapped") -> ImageClassifier:
    """Wrap a raw network (normalised images → logits) as an eval-mode :class:`ImageClassifier`.

    Args:
        net: a ``torch.nn.Module`` whose forward maps ``N×C×H×W`` normalised images to ``N×K`` logits.
        num_classes: ``K``; default ``None`` reads it from one forward pass of a dummy image. When
            given, that forward pass checks it.
        mean, std: per-channel normalisation ``(x - mean) / std`` applied inside the wrapper; their
            length is the number of input channels. Default ImageNet's (``IMAGENET_MEAN``,
            ``IMAGENET_STD``), the statistics of torchvision's and most timm ImageNet models.
        input_size: ``(H, W)`` or an int: images of another size are resized (bilinear,
            differentiable) before the network. ``None`` passes every size through. Default 224.
        class_names: one string per class; default ImageNet's 1000 names when ``K == 1000``, else
            ``"0"`` … ``"K-1"``.
        name: shown in reports (default ``"wrapped"``).

    Returns:
        an :class:`ImageClassifier` in eval mode, on ``net``'s device (``net`` itself is not
        copied: the wrapper holds it).

    Raises:
        TypeError: ``net`` is not an ``nn.Module`` (or is already a classifier), bad argument types.
        ValueError: ``mean`` and ``std`` of different lengths, ``std <= 0``, a forward pass that fails
            or does not return ``1×K`` logits, ``num_classes`` / ``class_names`` that disagree with it.

    Example::

        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))
        >>> model = wrap(net, mean=(0.5,), std=(0.5,), input_size=28)   # 1-channel, 10 classes
        >>> model.num_classes, model.class_names[:3]
        (10, ['0', '1', '2'])
    """
    if isinstance(net, ImageClassifier):
        raise TypeError("net: is already an ImageClassifier (it normalises and resizes itself); use "
                        "it directly, or wrap its .net")
    if not isinstance(net, nn.Module):
        hint = " (call the factory first: wrap(make_net()))" if callable(net) else ""
        raise TypeError(f"net: expected a torch.nn.Module, got {type(net).__name__}{hint}")
    mean, std = _check_stats(mean, "mean"), _check_stats(std, "std")
    if len(mean) != len(std):
        raise ValueError(f"mean, std: expected one value per channel each, got {len(mean)} means "
                         f"and {len(std)} stds")
    if min(std) <= 0:
        raise ValueError(f"std: expected positive values, got {list(std)}")
    size = _check_input_size(input_size)
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, got {name!r}")
    channels = len(mean)
    found = _probe(net, channels, size or (_DEFAULT_SIZE, _DEFAULT_SIZE))
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
            raise TypeError(f"num_classes: expected an int, got {num_classes!r}")
        if num_classes != found:
            raise ValueError(f"num_classes: the network returns {found} logits, not {num_classes}")
    names = _class_names(class_names, found)
    model = ImageClassifier(net, mean, std, size, names, channels=channels, name=name)
    _, device = module_dtype_device(net)
    return model.to(device if device is not None else "cpu").eval()


def is_classifier(obj) -> bool:
    """True for an object that already follows the classifier protocol (a module with
    ``num_classes``, ``class_names``, ``input_size`` and ``channels``): it takes [0, 1] images."""
    return isinstance(obj, nn.Module) and all(
        hasattr(obj, a) for a in ("num_classes", "class_names", "input_size", "channels"))
