"""Models: the registry (``load``, ``names``, ``register``), the pure-torch architectures and the
wrapper that owns normalisation and resizing.

Example::

    import patchbench as pb
    model = pb.models.load("mobilenet_v2")          # eval-mode ImageClassifier, offline weights
    print(pb.models.names())
    mine = pb.models.wrap(my_net, num_classes=10)   # any nn.Module: ImageNet mean/std, 224 px
    other = pb.models.load("torchvision:resnet18")  # or timm:NAME, module:function, file.py:function
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
from .sources import MissingPackageError, Source, register_source
from .wrap import wrap
from .zoo import (ModelSpec, WeightSource, cache_dir, check_spec, get_spec, imagenet_class_names,
                  load, names, read_state_dict, register, resolve_weights, spec_forms)

from .dual_encoder import (DualEncoder, Tokenizer, build_dual_encoder, load_dual_encoder,
                           save_dual_encoder)
from .open_clip_adapter import register_open_clip_source
from .text_image import TextImageModel, is_text_image_model

register_open_clip_source()   # "open_clip:NAME" specs (lazy: open_clip is imported only when used)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Classifier", "ImageClassifier", "Normalize",
    "EfficientNetLite", "MobileNetV2", "MTCNN", "load_mtcnn", "FmnistCNNSmall", "FmnistCNNWide", "FmnistResNet", "TinyCNN",
    "ModelSpec", "WeightSource", "cache_dir", "get_spec", "imagenet_class_names", "load", "names",
    "read_state_dict", "register", "resolve_weights", "Hasher", "csq_loss", "hadamard_centres",
    "multilabel_centres", "random_centres", "sign_codes", "build_csq", "load_csq", "save_hasher",
    "wrap", "check_spec", "spec_forms", "MissingPackageError", "Source", "register_source",
    "DualEncoder", "Tokenizer", "build_dual_encoder", "load_dual_encoder", "save_dual_encoder",
    "TextImageModel", "is_text_image_model",
]
