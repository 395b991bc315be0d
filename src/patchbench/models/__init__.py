"""Models: the registry (``load``, ``names``, ``register``), the pure-torch architectures and the
wrapper that owns normalisation and resizing.

Example::

    import patchbench as pb
    model = pb.models.load("mobilenet_v2")          # eval-mode ImageClassifier, offline weights
    print(pb.models.names())
"""
from .base import IMAGENET_MEAN, IMAGENET_STD, Classifier, ImageClassifier, Normalize
from .csq import build_csq, load_csq, save_hasher
from .efficientnet_lite import EfficientNetLite
from .hashing import (Hasher, csq_loss, hadamard_centres, multilabel_centres, random_centres,
                      sign_codes)
from .mobilenet_v2 import MobileNetV2
from .mtcnn import MTCNN, load_mtcnn
from .small import FmnistCNNSmall, FmnistCNNWide, TinyCNN
from .small_extra import FmnistResNet  # registers "fmnist_resnet" (the held-out model)
from .zoo import (ModelSpec, WeightSource, cache_dir, get_spec, imagenet_class_names, load, names,
                  read_state_dict, register, resolve_weights)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Classifier", "ImageClassifier", "Normalize",
    "EfficientNetLite", "MobileNetV2", "MTCNN", "load_mtcnn", "FmnistCNNSmall", "FmnistCNNWide", "FmnistResNet", "TinyCNN",
    "ModelSpec", "WeightSource", "cache_dir", "get_spec", "imagenet_class_names", "load", "names",
    "read_state_dict", "register", "resolve_weights", "Hasher", "csq_loss", "hadamard_centres",
    "multilabel_centres", "random_centres", "sign_codes", "build_csq", "load_csq", "save_hasher",
]
