"""Data: datasets by name (``load_dataset``), offline labelled samples, image folders, ImageNet
class tables, PIL ↔ tensor transforms, and Fashion-MNIST (imported on first use).

Example::

    import patchbench as pb
    x, y = pb.data.load_dataset("fashion-mnist", "test", n=64)   # see pb.data.dataset_names()
    x, y = pb.data.samples("imagenet")              # real photos, ImageNet-1k labels
    x, y = pb.data.photos("test")                   # the 78-photo pool v1; y = -1: no human label
    x, y = pb.data.ImageFolder("photos/", size=224).load()
    meta = pb.data.scene_metadata("query", n=4)     # items of the fmnist-scenes retrieval proxy
"""
from __future__ import annotations

import importlib

from .folders import (IMG_EXTENSIONS, ImageFolder, ImageNetVal, image_paths, load_images,
                      read_image, stack_batch)
from .imagenet import imagenet_class_names, imagenet_val_labels
from .registry import DatasetSpec, dataset_info, dataset_names, load_dataset
from .photos import Photo, fill_references, photo_info, photo_manifest, photos
from .samples import Sample, sample_info, samples
from .transforms import resize_center_crop, to_pil, to_tensor

__all__ = ["IMG_EXTENSIONS", "ImageFolder", "ImageNetVal", "image_paths", "load_images",
           "read_image", "stack_batch", "imagenet_class_names", "imagenet_val_labels", "Photo",
           "fill_references", "photo_info", "photo_manifest", "photos", "Sample",
           "sample_info", "samples", "resize_center_crop", "to_pil", "to_tensor",
           "load_fashion_mnist", "FASHION_MNIST_CLASSES", "DatasetSpec", "dataset_info",
           "dataset_names", "load_dataset", "load_retrieval", "retrieval_metadata", "scene_metadata",
           "dataset_statistics", "scene_captions", "keyword_captions", "keyword_matches",
           "captions_with_keyword", "caption_statistics", "ad_images", "ad_pool", "KEYWORDS",
           "load_caption_folder", "load_coco_captions", "read_caption_folder", "read_coco_captions"]

# Written in its own module (idx reader); loaded on first use so this package imports cheaply.
_LAZY = {"load_fashion_mnist": "fashion_mnist", "FASHION_MNIST_CLASSES": "fashion_mnist",
         "fashion_mnist_available": "fashion_mnist", "fashion_mnist": "fashion_mnist",
         # the retrieval proxies fmnist-objects / fmnist-scenes (their per-image metadata too)
         "load_retrieval": "retrieval", "retrieval_metadata": "retrieval",
         "scene_metadata": "retrieval", "dataset_statistics": "retrieval", "retrieval": "retrieval",
         # captions of fmnist-scenes, TTH's keywords and ad pool, caption-file loaders (issue 15)
         "captions": "captions", "scene_captions": "captions", "keyword_captions": "captions",
         "keyword_matches": "captions", "captions_with_keyword": "captions",
         "caption_statistics": "captions", "ad_images": "captions", "ad_pool": "captions",
         "KEYWORDS": "captions", "load_caption_folder": "caption_files",
         "load_coco_captions": "caption_files", "read_caption_folder": "caption_files",
         "read_coco_captions": "caption_files"}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return module if name == _LAZY[name] else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
