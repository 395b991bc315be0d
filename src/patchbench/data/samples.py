"""Small labelled image sets that work offline: real photos for ImageNet models and the first
Fashion-MNIST test images.

``samples("imagenet")`` are the photos shipped inside scikit-image (``skimage.data``) and
scikit-learn (``load_sample_images``) whose content *is* an ImageNet-1k class. Each label was chosen
by a person from the picture (never from a model's prediction), with a one-line reason per entry
below; photos with no honest ImageNet-1k class were left out (see ``LEFT_OUT``). Crops are used where a
sub-region of a photo is a clear example of a class. These 8 photos open the larger, versioned pool
of :func:`patchbench.data.photos` (78 real photographs, with the same labels and crops).

Example::

    x, y = samples("imagenet")                 # 8×3×224×224 float in [0, 1], long labels
    for s in sample_info("imagenet"): print(s.name, s.label, s.class_name)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .._registry import resolve_name
from .._validation import check_device, check_positive_int
from .transforms import _as_hw, resize_center_crop, to_tensor

NAMES = ("imagenet", "fashion-mnist")
_FASHION_DEFAULT_N = 100


@dataclass(frozen=True)
class Sample:
    """One labelled sample: where it comes from and why it has its label.

    Attributes:
        name: short id ("chelsea", "astronaut/shuttle", "fashion-mnist/test/0", ...).
        source: loader of the full photo (``"skimage.data.chelsea"``, ``"sklearn:china.jpg"``, ...).
        box: ``(left, top, right, bottom)`` crop in the source's pixels, or ``None`` (whole photo).
        label: class index; class_name: its name; why: the human reason for the label.
    """

    name: str
    source: str
    box: Optional[Tuple[int, int, int, int]]
    label: int
    class_name: str
    why: str


# Labels are ImageNet-1k indices (torchvision order). Names are patchbench.data.imagenet's.
_IMAGENET: Tuple[Sample, ...] = (
    Sample("chelsea", "skimage.data.chelsea", None, 285, "Egyptian Mau",
           "a short-haired domestic cat with a spotted/striped tawny coat; ImageNet's 'Egyptian cat' (Mau) "
           "synset is exactly such spotted tabby-like house cats (281 'tabby' and 282 'tiger cat' are "
           "equally defensible neighbours; we follow RESOURCES.md and the issue, which call 285 right)"),
    Sample("coffee", "skimage.data.coffee", None, 967, "espresso",
           "a small cup of espresso with crema, on a saucer: the drink itself fills the frame"),
    Sample("rocket", "skimage.data.rocket", None, 657, "missile",
           "a Falcon 9 rocket upright on its launch pad; ImageNet-1k has no space-rocket class and "
           "657 'missile' is its rocket class (744 'projectile' is a fired shell, 812 needs an "
           "orbiter) — the nearest honest class, not an exact one"),
    Sample("china", "sklearn:china.jpg", (0, 0, 427, 427), 698, "palace",
           "the Tower of Buddhist Incense, a building of Beijing's Summer Palace (imperial palace "
           "architecture); the 1k set has no 'pagoda', 'stupa' 832 is a dome-shaped shrine and "
           "'monastery' 663 a residence; the crop keeps the whole tower"),
    Sample("astronaut/shuttle", "skimage.data.astronaut", (340, 30, 500, 270), 812,
           "space shuttle", "the model of a Space Shuttle stack (orbiter, external tank, boosters) "
           "behind the astronaut, cropped away from her"),
    Sample("camera/tripod", "skimage.data.camera", (96, 100, 512, 512), 872, "tripod",
           "the cameraman's three-legged camera stand fills the crop (greyscale photo → RGB)"),
    Sample("motorcycle/disk-brake", "skimage.data.stereo_motorcycle", (476, 232, 712, 468), 535,
           "disc brake", "the motorcycle's front wheel with its brake disc and caliper in view"),
    Sample("grace_hopper", "matplotlib:grace_hopper.jpg", None, 652, "military uniform",
           "Rear Admiral Grace Hopper's portrait in US Navy dress uniform (insignia, medal ribbons): "
           "the uniform, not the face, is the subject of the 1k class"),
)

# Photos looked at and left out, with the reason (no honest ImageNet-1k class).
LEFT_OUT = {
    "sklearn:flower.jpg": "an orange pompon dahlia; the 1k set has no dahlia, and 985 'daisy' (white "
                          "rays around a yellow disc) looks nothing like it",
    "skimage.data.stereo_motorcycle (whole)": "a 550 cc Yamaha motorcycle; the 1k set has no "
                                              "motorcycle class, and 'moped' 665 / 'motor scooter' "
                                              "670 are different vehicles",
    "skimage.data.astronaut (whole)": "a portrait of an astronaut in a pressure suit: no 1k class",
    "skimage.data.clock": "motion-blurred beyond recognition",
    "skimage.data.coins / hubble_deep_field / immunohistochemistry / retina / moon / logo": "no "
        "ImageNet-1k class shows these subjects",
}


def _source_array(source: str) -> np.ndarray:
    try:
        if source.startswith("matplotlib:"):
            import matplotlib.cbook

            with matplotlib.cbook.get_sample_data(source.split(":", 1)[1]) as f:
                return np.asarray(Image.open(f).convert("RGB"))
        if source.startswith("sklearn:"):
            from sklearn.datasets import load_sample_images

            data = load_sample_images()
            fname = source.split(":", 1)[1]
            return next(im for f, im in zip(data.filenames, data.images) if f.endswith(fname))
        import skimage.data

        arr = getattr(skimage.data, source.rsplit(".", 1)[1])()
    except ImportError as e:
        raise ModuleNotFoundError(f"samples('imagenet') reads photos shipped with scikit-image and "
                                  f"scikit-learn, which are not installed ({e}); install them with "
                                  f"pip install 'patchbench[data]'") from e
    return arr[0] if isinstance(arr, tuple) else arr   # stereo_motorcycle → (left, right, disp)


@lru_cache(maxsize=4)
def _imagenet_batch(size: Tuple[int, int]) -> Tensor:
    images = []
    for s in _IMAGENET:
        img = Image.fromarray(_source_array(s.source))
        if s.box is not None:
            img = img.crop(s.box)
        images.append(to_tensor(resize_center_crop(img, size), "RGB"))
    return torch.stack(images)


def _check_n(key: str, n) -> Optional[int]:
    """``n`` as an int in 1..(size of the set), or None."""
    if n is None:
        return None
    n = check_positive_int(n, "n")
    available = len(_IMAGENET) if key == "imagenet" else 10000
    if n > available:
        raise ValueError(f"n: the {key!r} sample set has {available} images, got n={n}")
    return n


def _check_name(name: str) -> str:
    """The sample set ``name`` folds to (:func:`patchbench._registry.normalize_name`)."""
    return resolve_name(name, NAMES, "sample set", "name")


def samples(name: str = "imagenet", size=None, device="cpu",
            n: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """A small labelled batch that needs no download.

    Args:
        name: ``"imagenet"`` — the real photos above (labels are ImageNet-1k indices), or
            ``"fashion-mnist"`` — the first ``n`` Fashion-MNIST *test* images (labels 0…9).
        size: int or ``(height, width)``; photos are resized (PIL bicubic, antialiased) and
            centre-cropped. Default ``None`` = 224 for "imagenet", native 28 for "fashion-mnist".
        device: where the tensors go (default ``"cpu"``).
        n: how many samples (the first ``n``). Default ``None`` = all 8 photos for "imagenet", 100
            images for "fashion-mnist".

    Returns:
        ``(x, y)``: ``x`` float32 ``N×C×H×W`` in [0, 1] (C = 3 for "imagenet", 1 for
        "fashion-mnist"), ``y`` long ``N``. Names and reasons: :func:`sample_info`.

    Raises:
        LookupError: unknown ``name``. ModuleNotFoundError: scikit-image / scikit-learn missing.
        FileNotFoundError: the Fashion-MNIST files are missing (the message says how to get them).
    """
    key = _check_name(name)
    device = check_device(device, "device")
    n = _check_n(key, n)
    if size is not None:
        _as_hw(size)
    if key == "imagenet":
        hw = _as_hw(224 if size is None else size)
        x = _imagenet_batch(hw)[:n].clone()
        y = torch.tensor([s.label for s in _IMAGENET[:n]], dtype=torch.long)
    else:
        from .fashion_mnist import load_fashion_mnist

        x, y = load_fashion_mnist("test", limit=_FASHION_DEFAULT_N if n is None else n)
        if size is not None and _as_hw(size) != tuple(x.shape[-2:]):
            x = resize_center_crop(x, size)
    return x.to(device), y.to(device)


def sample_info(name: str = "imagenet", n: Optional[int] = None) -> List[Sample]:
    """What :func:`samples` returns, one :class:`Sample` per image in the same order (source, crop
    box, label, class name and the reason for the label)."""
    key = _check_name(name)
    n = _check_n(key, n)
    if key == "imagenet":
        return list(_IMAGENET[:n])
    from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist

    _, y = load_fashion_mnist("test", limit=_FASHION_DEFAULT_N if n is None else n)
    return [Sample(f"fashion-mnist/test/{i}", "fashion-mnist:t10k", None, int(c),
                   FASHION_MNIST_CLASSES[int(c)], "the dataset's own label")
            for i, c in enumerate(y.tolist())]
