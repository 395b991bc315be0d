"""One evaluation cell (ARCHITECTURE.md, "The data path"): clean accuracy, then an attack on the
*target* — the bare model for a non-adaptive attacker, ``Defended(model, defense)`` for an adaptive one —
then the defended model's accuracy on the adversarial images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._validation import check_bool, check_images, check_labels, check_positive_int, make_generator


@dataclass
class Evaluation:
    """Numbers of one cell; ``clean``/``robust``/``asr`` are :class:`patchbench.metrics.Rate`."""

    clean: object
    robust: object
    asr: object
    adaptive: bool
    defense: str
    attack: str
    result: object = field(default=None, repr=False)   # the AttackResult, for galleries

    def row(self, **extra) -> dict:
        r = {"defense": self.defense, "attack": self.attack, "adaptive": self.adaptive,
             "n": self.clean.n, "clean_acc": self.clean.value, "robust_acc": self.robust.value,
             "robust_acc_ci": [self.robust.lo, self.robust.hi], "asr": self.asr.value}
        r.update(extra)
        return r

    def __str__(self) -> str:
        mode = "adaptive" if self.adaptive else "non-adaptive"
        return (f"{self.attack} vs {self.defense} ({mode}): clean {self.clean}, robust {self.robust}, "
                f"attack success {self.asr}")


def _name(obj, default: str) -> str:
    if obj is None:
        return default
    return getattr(obj, "name", None) or type(obj).__name__


@torch.no_grad()
def _predict(model, x: Tensor, batch_size: int) -> Tensor:
    out = []
    for i in range(0, x.shape[0], batch_size):
        out.append(model(x[i:i + batch_size]).argmax(-1))
    return torch.cat(out)


def evaluate(model, x: Tensor, y: Tensor, attack=None, defense=None, threat=None,
             adaptive: bool = False, generator=None, batch_size: int = 64) -> Evaluation:
    """Clean and robust accuracy of ``model`` (behind ``defense`` if given) against ``attack``.

    Args:
        model: a classifier (``[0,1]`` images → logits).
        x, y: images ``N×C×H×W`` in [0, 1] and labels ``N``.
        attack: a :class:`~patchbench.attacks.PatchAttack` (``None`` → only clean numbers).
        defense: a :class:`~patchbench.defenses.Defense` or ``None`` (undefended).
        threat: the patch threat model (default ``Threat(area=0.05)``).
        adaptive: attack ``Defended(model, defense)`` (BPDA/EOT as the defense declares) instead of
            the bare model.
        generator: seed or ``torch.Generator`` for placements and random starts.
    """
    from .metrics import classification as M

    if not callable(model):
        raise TypeError(f"model: expected a classifier (an nn.Module returning logits), got "
                        f"{type(model).__name__}")
    if attack is not None and (isinstance(attack, type) or not callable(getattr(attack, "run", None))):
        raise TypeError(f"attack: expected a patchbench PatchAttack (e.g. "
                        f"pb.attacks.get('masked-pgd')), got {type(attack).__name__}")
    if defense is not None:
        from .defenses.base import Defense
        if not isinstance(defense, Defense):
            raise TypeError(f"defense: expected a patchbench Defense (e.g. pb.defenses.LGS()), got "
                            f"{type(defense).__name__}")
    adaptive = check_bool(adaptive, "adaptive")
    batch_size = check_positive_int(batch_size, "batch_size")
    x = check_images(x, "x", channels=getattr(model, "channels", None))
    y = check_labels(y, x.shape[0], getattr(model, "num_classes", None), "y").to(x.device)
    g = make_generator(generator, device=x.device.type if x.device.type == "cuda" else "cpu")
    defended = model
    if defense is not None:
        from .defenses.base import Defended
        # eval mode: a fresh nn.Module starts in training mode, and attacks restore the mode they
        # found, which would switch the classifier's dropout/batch-norm to training afterwards
        defended = Defended(model, defense).eval()
    oracle = hasattr(defense, "set_mask")
    if oracle:   # the oracle's mask covers all N images: classify them in one batch
        batch_size = x.shape[0]
    if threat is None:
        from .patches import Threat
        threat = Threat(area=0.05)

    if oracle:  # the GT-mask oracle has nothing to remove on clean images
        defense.set_mask(torch.zeros_like(x[:, :1]))
    pred_clean = _predict(defended, x, batch_size)
    clean = M.accuracy(pred_clean, y)
    if attack is None:   # no attack: nothing succeeds (success rate 0 over the correct images)
        return Evaluation(clean, clean, M.success_rate(pred_clean, pred_clean, y), adaptive,
                          _name(defense, "undefended"), "none")
    target = defended if (adaptive and defense is not None) else model
    if oracle and hasattr(threat, "masks"):
        # An adaptive attacker faces the oracle *with* the true mask (the patch pixels it will
        # repaint). Drawing the masks first with ``g`` is what ``attack.run`` does itself, so the
        # placements (and the random starts drawn after them) are the same as in every other cell.
        threat = threat.masks(x, generator=g)
        defense.set_mask(threat)
    res = attack.run(target, x, y, threat, generator=g)
    if oracle:
        defense.set_mask(res.mask)
    pred_adv = _predict(defended, res.x_adv, batch_size)
    robust = M.accuracy(pred_adv, y)
    asr = M.success_rate(pred_clean, pred_adv, y)
    return Evaluation(clean, robust, asr, adaptive, _name(defense, "undefended"),
                      _name(attack, "attack"), res)
