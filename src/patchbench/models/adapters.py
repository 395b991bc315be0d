"""Optional, lazy adapters to torchvision / timm pretrained networks.

Used by :func:`patchbench.models.load` only as a last resort, when no offline weights file is found.
Nothing here is imported at module import time: each adapter checks that the package can be found,
imports it inside a ``try`` and raises ``ImportError`` / ``RuntimeError`` with the reason when the
package is absent, broken (e.g. torchvision built for another torch) or cannot download weights.
The returned networks take the same normalised input as the pure-torch ones they replace:

* ``torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")`` is the very checkpoint
  ``mobilenet_v2-b0353104.pth`` (ImageNet mean/std);
* ``timm.create_model("tf_efficientnet_lite{k}", pretrained=True)`` is the TensorFlow
  EfficientNet-Lite port, which expects ``(x - 0.5) / 0.5`` like ours.

Example::

    net = torchvision_mobilenet_v2()   # raises ImportError here (no working torchvision)
"""
from __future__ import annotations

import importlib
import importlib.util

from torch import nn


def _import_optional(package: str):
    """Import ``package`` or raise ``ImportError`` saying why (absent or broken)."""
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"{package} is not installed")
    try:
        return importlib.import_module(package)
    except Exception as e:  # noqa: BLE001 - a broken install raises RuntimeError, OSError, ...
        raise ImportError(f"{package} is installed but does not import ({type(e).__name__}: {e})") from e


def torchvision_mobilenet_v2() -> nn.Module:
    """torchvision's ImageNet MobileNetV2 (downloads its weights on first use)."""
    tv = _import_optional("torchvision")
    return tv.models.mobilenet_v2(weights="IMAGENET1K_V1")


def timm_efficientnet_lite(variant: str) -> nn.Module:
    """timm's ``tf_efficientnet_lite{0,1,2}`` for our ``efficientnet_lite{0,1,2}`` name."""
    timm = _import_optional("timm")
    k = variant.rsplit("lite", 1)[-1]
    return timm.create_model(f"tf_efficientnet_lite{k}", pretrained=True)
