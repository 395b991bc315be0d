"""AdvHash: one universal adversarial patch that makes a hashing retrieval system return images of a
target class (Hu, Zhang, Liu, Zhang, Li, Jin, "AdvHash: Set-to-set Targeted Attack on Deep Hashing
with One Single Adversarial Patch", ACM MM 2021; the attack of PAIR's Table 2, §3.2 and §5.1).

The set-to-set problem becomes set-to-point: every patched query's code should reach the target
anchor ``c_t`` (:func:`patchbench.tasks.retrieval.anchor`, the component vote of the target class's
database codes). The loss, the α schedule, the bit weights, the sign steps, the product-weighted
gradient aggregation, the per-mini-batch stopping rule and the averaging of the last mini-batch
patches follow the authors' code (CGCL-codes/AdvHash, ``patch_attack.py``); the places where we
differ are listed in :class:`AdvHash`.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._validation import (check_bool, check_choice, check_images, check_number,
                           check_positive_int, make_generator)
from ..tasks import retrieval as R
from ._common import check_eot, check_model, frozen, uniform
from .base import AttackResult, PatchAttack, register
from .universal import _is_pair, check_threat, iterate_batches

AGGREGATIONS = ("product", "mean")


def _is_label(target) -> bool:
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        return True
    return isinstance(target, Tensor) and not target.is_floating_point() \
        and target.dtype != torch.bool


def resolve_target(model, target, target_code=None) -> Tuple[Optional[int], Tensor]:
    """``(target label or None, ±1 target code)`` from AdvHash's ``target``/``target_code``.

    ``target`` is a target class (an int, or ``N`` equal integer labels) whose anchor code is
    ``target_code`` (required: the anchor is the vote of the database codes, which the attack does
    not see), or directly a float ±1 code of ``bits`` values (then there is no class, and images are
    not checked against one)."""
    bits = getattr(model, "bits", None)
    if target is None:
        raise ValueError("target: AdvHash is a targeted attack; pass the target class (with "
                         "target_code=its anchor) or the ±1 target code itself")
    if not _is_label(target):
        if target_code is not None:
            raise ValueError("target_code: target is already a code; pass either a target class "
                             "with target_code=, or the code as target")
        if isinstance(target, Tensor) and target.dtype == torch.bool:
            raise TypeError("target: expected a class index or a float ±1 code, got a bool tensor")
        return None, R.check_target_code(target, bits, "target")
    if isinstance(target, Tensor):
        flat = target.flatten()
        if flat.numel() == 0 or bool((flat != flat[0]).any()):
            raise ValueError(f"target: a universal patch has one target class; got "
                             f"{flat.unique().tolist()}")
        target = int(flat[0])
    label = R.check_target_label(target)
    if target_code is None:
        raise ValueError(f"target_code: target class {label} needs its anchor code (e.g. "
                         f"patchbench.tasks.retrieval.anchor(db_codes, db_labels, {label})); or pass "
                         f"the ±1 code as target")
    return label, R.check_target_code(target_code, bits, "target_code")


def check_not_target_class(y: Tensor, label: Optional[int], name: str = "y") -> None:
    """Refuse images whose label (set) contains the target class (AdvHash trains and tests on
    images of other classes: for them the target's items are relevant anyway)."""
    if label is None:
        return
    same = R.has_label(y, label).nonzero()[:, 0]
    if same.numel():
        idx = same[:10].tolist()
        more = f" and {same.numel() - 10} more" if same.numel() > 10 else ""
        raise ValueError(f"target: the label of images {idx}{more} ({name}) is or contains the "
                         f"target class {label}; AdvHash attacks images of other classes (drop them, "
                         f"or choose another target)")


def check_hash_outputs(h, n: int, bits: int, name: str = "model") -> Tensor:
    """The hasher's output for ``n`` images: ``N×bits`` real values."""
    if not isinstance(h, Tensor) or h.dim() != 2 or h.shape[0] != n or not h.is_floating_point():
        got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise ValueError(f"{name}: expected a hasher returning N×bits real outputs for {n} images, "
                         f"got {got}")
    if h.shape[1] != bits:
        raise ValueError(f"{name}: the hasher returns {h.shape[1]} bits but the target code has "
                         f"{bits}")
    return h


@register("advhash")
class AdvHash(PatchAttack):
    r"""AdvHash universal targeted patch on a deep hashing model (Hu et al., ACM MM 2021).

    Threat model: white-box; one patch ``C×h×w`` (size, shape and placement from the ``Threat``; the
    paper's setting is a square of 5 % of the area, side 0.22, PAIR §5.1) replaces the pixels under
    its mask on every query. Trained on images of other classes than the target (the paper: 50,
    tested on 100 more). For each mini-batch, from the average of the last ``average_last``
    mini-batch patches, repeat up to ``iterations`` times:

    * ``out = tanh(α·H(x'))``, ``w = 1[|tanh H(x') − c_t| ≥ converged]`` (bits not yet converged),
      ``L = −Σ (w⊙out)·c_t / Σw`` (:func:`patchbench.tasks.retrieval.advhash_shares`);
    * α = ``alpha_high`` once the mean product per bit ``sign(H)·c_t / bits`` of the current patch
      exceeds ``alpha_switch``, else ``alpha_low`` (the authors' ``get_factor``);
    * patch ← clamp(patch − ``step``·sign(∇L), 0, 1), the per-image gradients aggregated with the
      weights ``p_i + |min_j p_j| + 2`` of the products ``p_i = sign(H_i)·c_t`` (the paper's
      product-based weighted gradient aggregation, the authors' ``grad_aggregation``), or averaged
      (``aggregation="mean"``);
    * stop when the mean product per bit reaches ``stop_product`` (1 = every bit of every image,
      the authors' ``product_threshold = bits``) or every bit has converged (``Σw = 0``).

    After an epoch, training stops early when its last mini-batch ended within 0.8 of ``bits``
    (``early_stop``; the authors' rule, without its test-set mAP clause, which would read the
    test queries). A random placement is redrawn every iteration (EOT over placements, as the
    universal patch); the authors paste at one fixed location (``Threat(placement=(fx, fy))``).

    Where we differ from the authors' code (all options keep the paper's meaning): steps of 1/255
    are taken in [0, 1] pixel space and clamped to [0, 1] (the authors step and clamp in ImageNet-
    normalised space); α and the aggregation weights are computed from the current patch's own
    forward pass (the authors reuse the products of the previous step's extra forward pass, which
    are the same numbers at a fixed placement; the first iteration of each mini-batch then uses
    α from the actual products instead of a reset to 0).

    Adaptive use: run it on ``Defended(hasher, defense)``; for a randomised defense its forward
    averages ``eot_samples`` draws of ``H(T(x'))`` inside the sign (PAIR eq. (4), ``h_adv = 7``), and
    non-differentiable defenses pass gradients by their BPDA rule.

    Args:
        iterations (int): steps per mini-batch at most. Default 1000 (``num_iteration``).
        epochs (int): passes over the training images. Default 5.
        batch_size (int): mini-batch size. Default 10.
        step (float): sign-step size. Default 1/255.
        alpha_low, alpha_high (float): tanh scales before/after the switch. Default 0.01, 1.
        alpha_switch (float): mean product per bit above which ``alpha_high`` applies. Default 0.9.
        converged (float): margin ``|tanh H − c_t| < converged`` of a converged bit. Default 0.3.
        aggregation (str): ``"product"`` (default, the paper) or ``"mean"``.
        stop_product (float): per-bit mean product that ends a mini-batch. Default 1.0.
        average_last (int): mini-batch patches averaged into the next start (and the result).
            Default 2 (``num_arg``).
        early_stop (bool): the epoch-level stop above. Default True.
        radius (int): Hamming radius of a per-query success. Default 2.
        eot: a ``patchbench.patches.EOT`` for training transforms (``None``: the threat's own).

    Targets: ``target`` = the target class with ``target_code`` = its anchor, or ``target`` = the
    ±1 code itself (see :func:`resolve_target`).

    Shape:
        x: ``N×C×H×W`` in [0, 1]; y: ``N`` classes or ``N×K`` multi-hot; patch ``C×h×w``; the model
        returns ``N×bits``; result.x_adv ``N×C×H×W``; result.mask ``N×1×H×W``.

    Example:
        >>> c_t = pb.tasks.retrieval.anchor(db_codes, db_labels, 3)
        >>> adv = AdvHash(); patch = adv.fit(hasher, (x_train, y_train), Threat(0.05), target=3,
        ...                                  target_code=c_t)
        >>> adv.apply(hasher, x_test, y_test, Threat(0.05), patch, target=3, target_code=c_t)
    """

    task = "retrieval"
    per_image = False

    def __init__(self, iterations: int = 1000, epochs: int = 5, batch_size: int = 10,
                 step: float = 1 / 255, alpha_low: float = R.ALPHA_LOW,
                 alpha_high: float = R.ALPHA_HIGH, alpha_switch: float = R.ALPHA_SWITCH,
                 converged: float = R.CONVERGED, aggregation: str = "product",
                 stop_product: float = 1.0, average_last: int = 2, early_stop: bool = True,
                 radius: int = R.RADIUS, eot=None):
        self.iterations = iterations
        self.epochs = epochs
        self.batch_size = batch_size
        self.step = step
        self.alpha_low = alpha_low
        self.alpha_high = alpha_high
        self.alpha_switch = alpha_switch
        self.converged = converged
        self.aggregation = aggregation
        self.stop_product = stop_product
        self.average_last = average_last
        self.early_stop = early_stop
        self.radius = radius
        self.eot = eot
        self._check()

    def _check(self) -> None:
        for name in ("iterations", "epochs", "batch_size", "average_last"):
            setattr(self, name, check_positive_int(getattr(self, name), name))
        self.radius = check_positive_int(self.radius, "radius", minimum=0)
        self.step = check_number(self.step, "step", 0.0, 1.0, low_inclusive=False)
        self.alpha_low = check_number(self.alpha_low, "alpha_low", 0.0, low_inclusive=False)
        self.alpha_high = check_number(self.alpha_high, "alpha_high", 0.0, low_inclusive=False)
        self.alpha_switch = check_number(self.alpha_switch, "alpha_switch", -1.0, 1.0)
        self.converged = check_number(self.converged, "converged", 0.0, 2.0, low_inclusive=False)
        self.stop_product = check_number(self.stop_product, "stop_product", -1.0, 1.0)
        check_choice(self.aggregation, "aggregation", AGGREGATIONS)
        self.early_stop = check_bool(self.early_stop, "early_stop")
        check_eot(self.eot)

    # ---- input checks ------------------------------------------------------------------------
    def _batch(self, model, x, y, label, name: str = "x") -> Tuple[Tensor, Tensor]:
        x = check_images(x, name, channels=getattr(model, "channels", None)).detach()
        y = R.check_labels(y, x.shape[0], "y" if name == "x" else f"{name} labels").to(x.device)
        check_not_target_class(y, label, "y" if name == "x" else name)
        return x, y

    def _setup(self, model, threat, target, target_code):
        self._check()
        check_model(model)
        check_threat(threat, "AdvHash")
        return resolve_target(model, target, target_code)

    # ---- training ----------------------------------------------------------------------------
    def fit(self, model, data, threat, *, target=None, target_code=None, generator=None) -> Tensor:
        """Train the patch on ``data`` (``(x, y)`` tensors or an iterable of ``(x, y)`` batches,
        re-iterable once per epoch); returns it (``C×h×w``) and keeps ``self.patch_``,
        ``self.history_`` (the loss ``L`` per iteration, at the α in use) and ``self.products_``
        (the mean product per bit of each iteration's patch)."""
        label, code = self._setup(model, threat, target, target_code)
        g = make_generator(generator)
        if _is_pair(data):
            data = self._batch(model, data[0], data[1], label, "data: images")
        recent, history, products = [], [], []
        with frozen(model):
            for epoch in range(self.epochs):
                count, last = 0, -math.inf
                for xb, yb in iterate_batches(data, self.batch_size, g):
                    xb, _ = self._batch(model, xb, yb, label, "data: images")
                    if not recent:
                        recent = [self._init_patch(xb, threat, g)]
                        c = code.to(xb.device)
                    start = recent[0] if len(recent) == 1 else torch.stack(recent).mean(0)
                    patch, last = self._minibatch(model, xb, c, threat, start, g, history, products)
                    recent = (recent + [patch])[-self.average_last:] if self.average_last > 1 \
                        else [patch]
                    count += 1
                if count == 0:
                    raise ValueError(f"data: epoch {epoch} yielded no batches (pass a re-iterable such "
                                     f"as a list or DataLoader, not a one-shot iterator)")
                if self.early_stop and last * c.numel() >= c.numel() - 0.8:
                    break
        self.patch_ = (recent[0] if len(recent) == 1 else torch.stack(recent).mean(0)).detach()
        self.history_, self.products_ = history, products
        return self.patch_

    def _init_patch(self, x: Tensor, threat, g: torch.Generator) -> Tensor:
        h, w = threat.patch_size(tuple(x.shape[-2:]))
        return uniform((x.shape[1], h, w), g, x.device)

    def _minibatch(self, model, x, code, threat, start, g, history, products):
        """The authors' ``batch_patch_attack``: sign steps on one mini-batch until it converges.
        Returns ``(patch, mean product per bit of the patch's last evaluated iterate)``."""
        bits, kw = code.numel(), ({} if self.eot is None else {"eot": self.eot})
        patch, mean = start.detach().clone(), -math.inf
        for it in range(self.iterations):
            params = threat.sample(x.shape[0], tuple(x.shape[-2:]), generator=g, **kw)
            patch.requires_grad_(True)
            h = model(threat.paste(x, patch, params)[0])
            if it == 0 and not products:
                check_hash_outputs(h, x.shape[0], bits)
            with torch.no_grad():
                prod = R.binarize(h) @ code.to(h.dtype)            # N products in [−bits, bits]
            mean = float(prod.mean()) / bits
            products.append(mean)
            if mean >= self.stop_product:
                break
            alpha = self.alpha_high if mean > self.alpha_switch else self.alpha_low
            shares, k = R.advhash_shares(h, code, alpha, self.converged)
            if float(k) == 0:                                    # every bit converged
                break
            if self.aggregation == "product":
                a = prod + prod.min().abs() + 2
                obj = (a * shares).sum() / a.sum()
            else:
                obj = shares.mean()
            grad, = torch.autograd.grad(obj, patch)
            history.append(-float(shares.detach().sum()))
            with torch.no_grad():
                patch = (patch.detach() + self.step * grad.sign()).clamp_(0.0, 1.0)
        return patch.detach(), mean

    # ---- scoring -----------------------------------------------------------------------------
    def apply(self, model, x: Tensor, y, threat, patch: Tensor, *, target=None, target_code=None,
              generator=None) -> AttackResult:
        """Paste ``patch`` on each query at a placement drawn from ``threat`` and score it:
        ``success`` = the code lies within Hamming ``radius`` of the target code; ``eligible`` = the
        clean code did not already. ``info``: ``target`` (class or None), ``target_code``,
        ``hamming`` (per query, after the attack), ``placement``."""
        label, code = self._setup(model, threat, target, target_code)
        x, y = self._batch(model, x, y, label)
        g = make_generator(generator)
        patch = check_images(patch, "patch", allow_single=True)
        hw = tuple(threat.patch_size(tuple(x.shape[-2:])))
        if patch.shape[0] != 1 or patch.shape[1] != x.shape[1] or tuple(patch.shape[-2:]) != hw:
            raise ValueError(f"patch: expected a universal patch {x.shape[1]}×{hw[0]}×{hw[1]} (this "
                             f"threat on {x.shape[-2]}×{x.shape[-1]} images), got shape "
                             f"{tuple(patch.shape)}")
        patch, code = patch[0].to(x.device), code.to(x.device)
        params = threat.sample(x.shape[0], tuple(x.shape[-2:]), generator=g)
        with torch.no_grad(), frozen(model):
            clean = check_hash_outputs(model(x), x.shape[0], code.numel())
            x_adv, mask = threat.paste(x, patch, params)
            dist = R.hamming(R.binarize(model(x_adv)), code)
        ok = R.hamming(R.binarize(clean), code) > self.radius
        return AttackResult(x_adv=x_adv, patch=patch, mask=mask, success=dist <= self.radius,
                            info={"target": label, "target_code": code, "hamming": dist,
                                  "placement": params}, eligible=ok)

    def run(self, model, x: Tensor, y, threat, *, target=None, target_code=None,
            generator=None) -> AttackResult:
        """Train the patch on ``(x, y)`` (``fit``) then paste it on the same images (``apply``).
        For the paper's protocol (train on 50 images, test on others) call ``fit`` then ``apply``,
        or pass ``attack_train=`` to :func:`patchbench.evaluate`."""
        label, _ = self._setup(model, threat, target, target_code)
        x, y = self._batch(model, x, y, label)
        g = make_generator(generator)
        patch = self.fit(model, (x, y), threat, target=target, target_code=target_code, generator=g)
        res = self.apply(model, x, y, threat, patch, target=target, target_code=target_code,
                         generator=g)
        res.history = list(self.history_)
        res.info["products"] = list(self.products_)
        return res
