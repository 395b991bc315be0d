"""Tasks: what a model's output means, the objective an attack optimises and the metrics of a cell.

* ``classification`` — :class:`~patchbench.tasks.classification.Classification`: logits; CE / DLR /
  C&W / logit-margin objectives (Madry et al. 2018; Croce & Hein 2020; Carlini & Wagner 2017; Karmon
  et al. 2018); accuracy and attack success rate with Wilson intervals (PatchZero §4.1).
* ``face-detection`` — :class:`~patchbench.tasks.face.FaceDetection`: a face detector's scored
  windows; the adversarial sample sets and loss of Yang et al. (ECCV 2020); precision / recall at δ
  and AF_β.
* ``retrieval`` — :class:`~patchbench.tasks.retrieval.Retrieval`: a hasher's ``N×bits`` outputs;
  AdvHash's objective towards a target anchor code (Hu et al., ACM MM 2021); clean mAP@k and, for the
  attacked queries, t-mAP@k ("irrelevant") and mAP@k ("relevant") (PAIR, ACM MM 2024, Table 2).
* ``text-image`` — :class:`~patchbench.tasks.text_image.TextImage`: a dual encoder's image
  embeddings; TTH's objective towards a keyword's mean text embedding (Hu, Chen & Li, ICASSP 2023);
  clean R@10 and, with patched ads in the gallery, irrelevant / relevant R@10 (PAIR Table 1).
"""
from . import classification, face, retrieval, text_image  # noqa: F401  (registers the tasks)
from .base import Task, get, names, register

__all__ = ["Task", "get", "names", "register"]
