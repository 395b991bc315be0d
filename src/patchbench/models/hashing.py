"""Deep hashing: the :class:`Hasher` protocol, CSQ's hash centres and CSQ's loss.

A hasher maps images to ``bits`` real outputs ``H(x)``; the code is ``sign(H(x))`` (PAIR §3.1,
eq. 1) and retrieval ranks the database by Hamming distance to the query's code.

CSQ — Yuan et al., "Central Similarity Quantization for Efficient Image and Video Retrieval",
CVPR 2020 (authors' code: yuanli2333/Hadamard-Matrix-for-hashing):

* §3.2, hash centres: one centre per class, mutually far apart in Hamming space. With ``bits`` a
  power of two, the rows of the Sylvester Hadamard matrix ``H_bits`` are pairwise ``bits/2`` apart
  (:func:`hadamard_centres`); up to ``2·bits`` classes use the rows of ``[H; −H]``; beyond that,
  random balanced codes (``bits/2`` entries −1, as the authors' notebook samples them) with a minimum
  Hamming distance (:func:`random_centres`; the authors' notebook asks for >= 20 of 64 bits,
  AdvHash's ``CSQ.py`` for more than ``bits/4``; we draw class by class until each is far enough).
* §3.2, multi-label data: the centre of an image is the sign of the mean of its labels' centres
  (:func:`multilabel_centres`). Bits where the mean is 0 (two labels that disagree) are filled as
  the authors' ``train.py`` and AdvHash's ``CSQ.py`` do, from one random ±1 vector drawn once per run
  (``ties="random"``, our default, seeded); ``ties="positive"`` makes them +1.
* §3.3, loss (:func:`csq_loss`): binary cross-entropy between ``(tanh H + 1)/2`` and ``(c + 1)/2``
  plus λ times a quantisation term. Squared ``(|tanh H| − 1)²`` (default) is the authors' code;
  ``quantization="logcosh"`` smooths the same residual with ``log cosh``, the paper's §3.3 form as
  we recall it (the CSQ text is not among the papers shipped with this project, so unchecked). The
  authors' ``train.py`` also adds a pairwise term (λ1 = 0.2) and weights the quantisation by 0.05;
  we keep the central loss alone with λ = 1e-4, as AdvHash's own ``CSQ.py`` trains its victim
  (CGCL-codes/AdvHash; the same squared term, BCE on ``tanh``, the same tie vector).

Example::

    centres = hadamard_centres(10, 64)                     # 10×64, ±1, pairwise distance 32
    loss = csq_loss(hasher(x), centres[y])                 # hasher: a Hasher, y: class indices
    codes = hasher.codes(x)                                # N×64, ±1
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._io import predict_batched
from .._validation import (check_choice, check_int, check_nonnegative, check_positive_int,
                           check_seed, check_tensor_device)
from .base import Normalize, check_batch_call, check_input_for

QUANTIZATIONS = ("squared", "logcosh")
TIES = ("random", "positive")


def sign_codes(h: Tensor) -> Tensor:
    """``sign(h)`` as ±1 floats with 0 → +1, so every bit is a bit. Inner-loop helper (unchecked)."""
    return torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h))


class Hasher(nn.Module):
    """An image → hash model; the protocol the retrieval task, attacks and defenses code against.

    Attributes: ``bits`` (code length), ``channels`` (3), ``input_size`` ``(H, W)`` the network sees
    (other sizes are resized inside, bilinear, antialiased when shrinking), ``name``, ``centres``
    (``K×bits`` ±1 class centres as a buffer, or ``None``).

    Args:
        net: maps normalised ``N×channels×H×W`` to ``N×bits`` real outputs.
        bits: code length. mean, std: per-channel normalisation applied inside :meth:`forward`.
        input_size: ``(H, W)`` of ``net``. name: registry name. centres: ``K×bits`` ±1 or None.
        channels: input channels (default 3).

    ``forward(x)`` takes ``N×C×H×W`` in [0, 1] and returns the pre-sign outputs ``H(x)``
    (``N×bits``, differentiable in ``x``); :meth:`codes` the ±1 codes. Inputs are checked like
    :class:`~patchbench.models.base.ImageClassifier`'s (integer images, values outside [0, 1], NaN,
    other devices or channel counts are refused).
    """

    def __init__(self, net: nn.Module, bits: int, mean: Sequence[float], std: Sequence[float],
                 input_size: Tuple[int, int], name: str = "hasher",
                 centres: Optional[Tensor] = None, channels: int = 3):
        super().__init__()
        self.net = net
        self.bits = check_positive_int(bits, "bits")
        self.channels = check_positive_int(channels, "channels")
        self.normalize = Normalize(mean, std)
        self.input_size = tuple(check_positive_int(s, "input_size") for s in input_size)
        self.name = name
        if centres is not None:
            centres = check_codes(centres, "centres", bits=self.bits)
        self.register_buffer("centres", centres)

    def forward(self, x: Tensor) -> Tensor:
        x = check_input_for(self.net, x, "x", channels=self.channels)
        if tuple(x.shape[-2:]) != self.input_size:
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False,
                              antialias=shrink)
        return self.net(self.normalize(x))

    def codes(self, x: Tensor, batch_size: int = 64) -> Tensor:
        """``N×bits`` float ±1 codes ``sign(H(x))`` (0 → +1), without gradients, ``batch_size``
        images per forward, in eval mode (the mode is restored after); on ``x``'s device."""
        return predict_batched(self, x, check_batch_call(x, batch_size), reduce=sign_codes)


def check_codes(codes, name: str = "codes", bits: Optional[int] = None) -> Tensor:
    """A ``N×bits`` tensor of ±1 values (any real dtype), returned as float32."""
    if not isinstance(codes, Tensor):
        raise TypeError(f"{name}: expected an N×bits tensor of ±1, got {type(codes).__name__}")
    check_tensor_device(codes, name)
    if codes.dim() != 2 or (bits is not None and codes.shape[1] != bits):
        want = f"N×{bits}" if bits is not None else "N×bits"
        raise ValueError(f"{name}: expected a {want} tensor of ±1, got shape {tuple(codes.shape)}")
    if codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"{name}: expected real ±1 values, got dtype {codes.dtype}")
    if codes.numel() and not bool(((codes == 1) | (codes == -1)).all()):
        bad = codes[(codes != 1) & (codes != -1)][0].item()
        raise ValueError(f"{name}: hash codes must be ±1, found {bad!r} (binarise with "
                         f"sign_codes(h))")
    return codes.float()


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def hadamard_matrix(n: int) -> Tensor:
    """Sylvester's Hadamard matrix ``H_n`` (``n`` a power of two), float ±1, ``H Hᵀ = n I``;
    the same matrix as ``scipy.linalg.hadamard(n)``."""
    n = check_positive_int(n, "n")
    if not _is_power_of_two(n):
        raise ValueError(f"n: Sylvester's construction needs a power of two, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def default_min_distance(bits: int) -> int:
    """The authors' threshold for random centres, 20 of 64 bits, scaled: ``round(bits · 5/16)``."""
    return max(1, round(bits * 5 / 16))


def random_centres(num_classes: int, bits: int, min_distance: Optional[int] = None,
                   seed: int = 0, max_tries: int = 1000) -> Tensor:
    """``num_classes`` random balanced ±1 codes (``bits // 2`` entries −1 each, as the authors'
    notebook draws them) that are pairwise at least ``min_distance`` apart (default
    :func:`default_min_distance`), drawn greedily class by class from ``seed``.

    Raises ValueError when ``max_tries`` draws cannot place a class (lower ``min_distance``).
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    bits = check_positive_int(bits, "bits", minimum=2)
    d = default_min_distance(bits) if min_distance is None else \
        check_int(min_distance, "min_distance", minimum=0, maximum=bits)
    max_tries = check_positive_int(max_tries, "max_tries")
    g = torch.Generator().manual_seed(check_seed(seed))
    out = torch.empty(num_classes, bits)
    for k in range(num_classes):
        for _ in range(max_tries):
            c = torch.ones(bits)
            c[torch.randperm(bits, generator=g)[:bits // 2]] = -1
            if k == 0 or int(((out[:k] != c).sum(1)).min()) >= d:
                out[k] = c
                break
        else:
            raise ValueError(f"min_distance: found no code {d} bits away from the {k} centres "
                             f"drawn so far in {max_tries} tries ({num_classes} classes, {bits} "
                             f"bits); lower min_distance or use more bits")
    return out


def hadamard_centres(num_classes: int, bits: int, seed: int = 0,
                     min_distance: Optional[int] = None) -> Tensor:
    """CSQ's hash centres (§3.2), ``num_classes×bits`` float ±1.

    ``num_classes <= bits``: the first rows of ``H_bits`` (pairwise Hamming distance ``bits/2``);
    ``<= 2·bits``: the first rows of ``[H_bits; −H_bits]`` (distance ``bits/2``, or ``bits`` between
    a row and its negation); more: :func:`random_centres` (``seed``, ``min_distance``).

    Raises ValueError when the Hadamard rows are needed and ``bits`` is not a power of two.
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    bits = check_positive_int(bits, "bits")
    if num_classes > 2 * bits:
        return random_centres(num_classes, bits, min_distance, seed)
    if not _is_power_of_two(bits):
        raise ValueError(f"bits: Hadamard centres need a power of two (Sylvester's H_bits), got "
                         f"{bits}; use 16, 32, 64, ... bits, or random_centres({num_classes}, "
                         f"{bits})")
    h = hadamard_matrix(bits)
    return (h if num_classes <= bits else torch.cat([h, -h]))[:num_classes].clone()


def multilabel_centres(labels, centres, ties: str = "random", seed: int = 0) -> Tensor:
    """The target centre of each image (§3.2): ``sign`` of the mean of its labels' centres.

    Args:
        labels: ``N×K`` multi-hot (0/1, any dtype), or ``N`` class indices (then the centres of
            those classes are returned as they are).
        centres: ``K×bits`` ±1 class centres.
        ties: bits where the mean is 0: ``"random"`` (default; the authors' one random ±1 vector,
            drawn from ``seed``) or ``"positive"`` (+1).
        seed: seed of that vector (default 0).

    Returns ``N×bits`` float ±1 on ``centres``' device. Raises ValueError for an image without
    labels, or labels that do not fit the centres.
    """
    centres = check_codes(centres, "centres")
    ties = check_choice(ties, "ties", TIES)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels: expected N class indices or an N×K multi-hot tensor, got "
                        f"{type(labels).__name__}")
    labels = labels.to(centres.device)
    k = centres.shape[0]
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"labels: class indices must be integers, got dtype {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"labels: class indices must lie in 0..{k - 1} (one centre each), got "
                             f"{int(labels.min())}..{int(labels.max())}")
        return centres[labels.long()]
    if labels.dim() != 2 or labels.shape[1] != k:
        raise ValueError(f"labels: expected N×{k} multi-hot labels (one column per centre), got "
                         f"shape {tuple(labels.shape)}")
    m = labels.float()
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("labels: a multi-hot tensor holds only 0 and 1")
    count = m.sum(1, keepdim=True)
    if bool((count == 0).any()):
        rows = (count[:, 0] == 0).nonzero()[:, 0][:5].tolist()
        raise ValueError(f"labels: image(s) {rows} have no label, so no centre")
    mean = m @ centres / count
    fill = torch.ones(centres.shape[1], device=centres.device)
    if ties == "random":
        g = torch.Generator().manual_seed(check_seed(seed))
        fill = (torch.randint(0, 2, (centres.shape[1],), generator=g).float() * 2 - 1).to(centres.device)
    return torch.where(mean > 0, 1.0, torch.where(mean < 0, -1.0, fill.expand_as(mean)))


def csq_loss(h: Tensor, target_centres: Tensor, lam: float = 1e-4,
             quantization: str = "squared") -> Tensor:
    """CSQ's loss (§3.3): ``BCE((tanh h + 1)/2, (c + 1)/2) + lam · Q(tanh h)``, both means over
    ``N×bits``.

    ``(tanh h + 1)/2 = sigmoid(2h)``, so the cross-entropy is computed from the logits ``2h``
    (stable where ``tanh`` saturates). ``Q``: ``"squared"`` ``(|u| − 1)²`` (authors' code, default)
    or ``"logcosh"`` ``log cosh(|u| − 1)`` (the smooth form, see the module doc), ``u = tanh h``.

    Args:
        h: ``N×bits`` pre-sign outputs of a :class:`Hasher`. target_centres: ``N×bits`` ±1.
        lam: weight of the quantisation term (default 1e-4). quantization: see above.
    """
    if not isinstance(h, Tensor) or not h.is_floating_point() or h.dim() != 2:
        raise TypeError(f"h: expected an N×bits float tensor, got "
                        f"{tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__}")
    c = check_codes(target_centres, "target_centres", bits=h.shape[1])
    if c.shape[0] != h.shape[0]:
        raise ValueError(f"target_centres: expected one centre per output ({h.shape[0]}), got "
                         f"{c.shape[0]}")
    lam = check_nonnegative(lam, "lam")
    quantization = check_choice(quantization, "quantization", QUANTIZATIONS)
    c = c.to(device=h.device, dtype=h.dtype)
    central = F.binary_cross_entropy_with_logits(2 * h, (c + 1) / 2)
    r = h.tanh().abs() - 1
    q = r.pow(2) if quantization == "squared" else torch.log(torch.cosh(r))
    return central + lam * q.mean()
