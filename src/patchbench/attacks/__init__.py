"""Patch attacks on image classifiers, found by name: ``patchbench.attacks.get("masked-pgd")``.

* ``masked-pgd``      — :class:`MaskedPGD` (Madry et al. 2018, masked as in PatchZero eq. (2))
* ``masked-apgd``     — :class:`MaskedAPGD` (Croce & Hein, ICML 2020, Alg. 1, masked)
* ``masked-cw``       — :class:`MaskedCW` (Carlini & Wagner 2017 margin, Adam, tanh patch)
* ``universal-patch`` — :class:`UniversalPatch` (Brown et al. 2017, EOT over placements/transforms)
* ``lavan``           — :class:`LaVAN` (Karmon et al. 2018, target-minus-source logits)
* ``face-patch``      — :class:`FacePatch` (Yang et al., ECCV 2020, universal face-hiding patch; task
  ``face-detection``)
* ``advhash``         — :class:`AdvHash` (Hu et al., ACM MM 2021, universal targeted patch on a deep
  hashing model; task ``retrieval``)
* ``tth``             — :class:`TTH` (Hu, Chen & Li, ICASSP 2023, universal poisoning patch on the
  gallery images of a text-to-image search; task ``text-image``)
* ``fgsm`` / ``pgd-linf`` — :class:`FGSM`, :class:`PGDLinf` (whole-image L∞ noise, the adversarial
  half of the defensive-patch evaluation; not patch attacks)

Each attack optimises its task's objective (``attack.task``, :mod:`patchbench.tasks`).
"""
from .advhash import AdvHash
from .base import AttackResult, PatchAttack, get, names, register
from .face import FacePatch
from .lavan import LaVAN
from .masked_apgd import MaskedAPGD
from .masked_cw import MaskedCW
from .masked_pgd import MaskedPGD
from .noise import FGSM, PGDLinf
from .tth import TTH
from .universal import UniversalPatch

__all__ = ["AttackResult", "PatchAttack", "get", "names", "register", "MaskedPGD", "MaskedAPGD",
           "MaskedCW", "UniversalPatch", "LaVAN", "FacePatch", "FGSM", "PGDLinf", "AdvHash", "TTH"]
