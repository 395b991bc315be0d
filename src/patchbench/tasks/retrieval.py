"""Content-based image retrieval over hash codes: the model is a hasher ``H`` (``N×bits`` real
outputs, code ``sign(H(x))``, PAIR eq. (1)); a query's label is one class (``N`` long) or a
multi-hot set (``N×K``, COCO-style), and two items are relevant when they share a label.

Objective (AdvHash, Hu et al., ACM MM 2021; the set-to-point form PAIR §3.2 describes): push the
codes of patched queries towards the target anchor ``c_t``. With ``out = tanh(α·H(x'))`` and the
not-yet-converged bits ``w = 1[|tanh H(x') − c_t| ≥ 0.3]``, the attack minimises
``L = −Σ_i Σ_j w_ij out_ij c_tj / Σ w`` (the authors' ``target_adv_loss``); :meth:`Retrieval.objective`
returns each query's share of ``−L`` (to maximise; the shares sum to ``−L``).

Success of one query (our choice, stated here): its code lies within Hamming radius ``r = 2`` of
``c_t`` — the "hash lookup" radius of Hamming-space retrieval (Cao et al., "Deep Cauchy Hashing for
Hamming Space Retrieval", CVPR 2018, the ranking PAIR cites as [5]), so a lookup at radius 2 lands in
the target's bucket. The retrieval-level success, the top-k filling with target items, is measured by
the cell metrics (t-mAP).

Anchor (:func:`anchor`): the component-voting code of DHTA (Bai et al., ECCV 2020, PAIR's [3]),
which AdvHash uses: ``c_t = sign(Σ_{i: target ∈ labels_i} b_i)`` over the database codes, a tie
(a zero sum) giving +1. For CSQ (Yuan et al., CVPR 2020) the class's codes cluster around its
Hadamard centre, so wherever most of them agree with the centre on a bit, the vote is that bit of
the centre; a well-trained CSQ gives its centre exactly.

Cell metrics (:meth:`Retrieval.cell_metrics`, PAIR §5.1 "Evaluation metrics", Table 2):

* ``clean``: mAP@k of the clean queries with their true labels;
* ``irrelevant``: t-mAP@k of the attacked queries — mAP@k with the target label standing in for the
  true one (lower is better for a defense);
* ``relevant``: mAP@k of the attacked queries with their true labels (higher is better).

AP@k is the authors' ``CalcTopMap``: the mean precision over the relevant items inside the top k
(0 when none is), ranking by Hamming distance with ties broken by database index
(:mod:`patchbench.metrics.retrieval`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .._validation import check_int
# ``binarize``: sign(h) as ±1 floats with 0 → +1 (one home: the Hasher protocol's binarisation)
from ..models.hashing import sign_codes as binarize
from .base import Task, register

#: AdvHash's constants (authors' code, ``patch_attack.py``): tanh scale before/after the switch, the
#: mean per-bit product that switches it, the convergence margin of the bit weights.
ALPHA_LOW, ALPHA_HIGH, ALPHA_SWITCH, CONVERGED = 0.01, 1.0, 0.9, 0.3
RADIUS = 2   # Hamming lookup radius of a per-query success (Cao et al. 2018)
TOPK = 1000  # the authors' CalcTopMap(topk=1000)



def check_codes(codes, name: str = "codes") -> Tensor:
    """``N×bits`` ±1 codes (:func:`patchbench.metrics.retrieval.check_codes`), as float."""
    from ..metrics.retrieval import check_codes as _check
    return _check(codes, name)


def check_labels(y, n: int, name: str = "labels") -> Tensor:
    """Retrieval labels for ``n`` items: ``N`` class indices (long, >= 0) or an ``N×K`` multi-hot
    tensor of 0/1 (any dtype). Returned as long class indices or as a float multi-hot tensor
    (:func:`patchbench.metrics.retrieval.check_labels`)."""
    from ..metrics.retrieval import check_labels as _check
    y = _check(y, name, n)
    return y if y.dim() == 1 else y.float()


def has_label(y: Tensor, label: int) -> Tensor:
    """``N`` bool: the item's label (or label set) contains ``label``. Inner helper."""
    if y.dim() == 1:
        return y == label
    if label >= y.shape[1]:
        return torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    return y[:, label] > 0


def check_target_label(target, labels: Optional[Tensor] = None, name: str = "target") -> int:
    """A target class index (>= 0; ``< K`` for ``N×K`` multi-hot ``labels``)."""
    t = check_int(target, name, minimum=0)
    if labels is not None and labels.dim() == 2 and t >= labels.shape[1]:
        raise ValueError(f"{name}: class {t} out of range for multi-hot labels of {labels.shape[1]} "
                         f"classes")
    return t


def target_labels(labels: Tensor, target: int, n: int) -> Tensor:
    """``n`` labels in the format of ``labels`` that all say ``target`` (the t-mAP query labels)."""
    if labels.dim() == 1:
        return torch.full((n,), target, dtype=torch.long, device=labels.device)
    out = torch.zeros(n, labels.shape[1], dtype=labels.dtype, device=labels.device)
    out[:, target] = 1
    return out


def anchor(db_codes, db_labels, target_label) -> Tensor:
    """The target anchor ``c_t = sign(Σ b_i)`` over the database codes ``b_i`` whose labels contain
    ``target_label`` (DHTA's component voting, used by AdvHash); a zero sum gives +1.

    Args:
        db_codes: ``N×bits`` ±1 codes; db_labels: ``N`` classes or ``N×K`` multi-hot.
        target_label: the target class.
    Returns: ``bits`` float ±1 on the codes' device.
    Raises ``ValueError`` for codes that are not ±1, mismatched lengths, or a target no database
    item carries (its anchor would be undefined).
    """
    codes = check_codes(db_codes, "db_codes")
    labels = check_labels(db_labels, codes.shape[0], "db_labels").to(codes.device)
    t = check_target_label(target_label, labels, "target_label")
    sel = has_label(labels, t)
    if not bool(sel.any()):
        raise ValueError(f"target_label: no database item has class {t}; the anchor is the vote of "
                         f"the target class's database codes")
    return binarize(codes[sel].sum(0))


def check_target_code(code, bits: Optional[int] = None, name: str = "target_code") -> Tensor:
    """A ``bits`` (or ``1×bits``) ±1 code, returned as a 1-D float tensor."""
    if not isinstance(code, Tensor):
        raise TypeError(f"{name}: expected a ±1 code tensor of {bits or 'bits'} values, got "
                        f"{type(code).__name__}")
    if code.dim() == 2 and code.shape[0] == 1:
        code = code[0]
    if code.dim() != 1:
        raise ValueError(f"{name}: expected one code (a 1-D tensor of ±1), got shape "
                         f"{tuple(code.shape)}")
    code = check_codes(code[None], name)[0]
    if bits is not None and code.numel() != bits:
        raise ValueError(f"{name}: expected {bits} bits (the hasher's code length), got "
                         f"{code.numel()}")
    return code


def hamming(codes: Tensor, code: Tensor) -> Tensor:
    """``N`` Hamming distances of ±1 ``codes`` (N×bits) to one ±1 ``code``. Inner helper."""
    return ((codes.shape[1] - codes @ code.to(codes.dtype)) / 2).round().long()


def advhash_shares(h: Tensor, code: Tensor, alpha: float = ALPHA_LOW,
                   converged: float = CONVERGED) -> Tuple[Tensor, Tensor]:
    """Each query's share of ``−L`` and the number of active bits ``Σw`` (0-d).

    ``s_i = Σ_j w_ij tanh(α h_ij) c_j / Σw`` with ``w = 1[|tanh h − c| ≥ converged]`` (detached;
    the authors' ``target_adv_loss``, which returns −inf when ``Σw = 0`` and the attack stops; here
    every share is then 0). ``h`` N×bits, ``code`` bits (or N×bits). Inner-loop helper."""
    c = code.to(h.dtype)
    with torch.no_grad():
        w = ((torch.tanh(h) - c).abs() >= converged).to(h.dtype)
        k = w.sum()
    shares = (w * torch.tanh(alpha * h) * c).sum(1) / k.clamp_min(1.0)
    return shares, k


@dataclass(frozen=True)
class MeanScore:
    """A mean over queries (an mAP) with its normal-approximation 95 % interval, shaped like
    :class:`patchbench.metrics.Rate` (``value``, ``n``, ``lo``, ``hi``) so an
    :class:`~patchbench.evaluation.Evaluation` can hold it. ``n == 0`` gives NaN."""

    value: float
    n: int
    lo: float
    hi: float

    @classmethod
    def of(cls, per_query: Tensor) -> "MeanScore":
        v = per_query.detach().double().flatten()
        n = int(v.numel())
        if n == 0:
            return cls(math.nan, 0, math.nan, math.nan)
        m = float(v.mean())
        half = 1.96 * float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
        return cls(m, n, max(0.0, m - half), min(1.0, m + half))

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.2f}, {self.hi:.2f}] (n={self.n})"


def _none_if_nan(v: float):
    return None if isinstance(v, float) and math.isnan(v) else v


@register("retrieval")
class Retrieval(Task):
    """Hash-code retrieval (AdvHash / PAIR Table 2): the model is a hasher (``N×bits`` outputs),
    the labels are classes or multi-hot sets, the target a ±1 anchor code."""

    outputs = "N×bits real hash outputs H(x) (the code is sign(H(x)))"

    def objective(self, outputs: Tensor, y, target: Optional[Tensor] = None, *,
                  alpha: float = ALPHA_HIGH, converged: float = CONVERGED,
                  radius: int = RADIUS) -> Tuple[Tensor, Tensor]:
        """Per query: its share of AdvHash's ``−L`` (:func:`advhash_shares`, to maximise) and
        success (``sign(H) within Hamming radius`` of the target code).

        ``target``: the ±1 target code (``bits``, ``1×bits`` or ``N×bits`` identical rows); AdvHash
        is targeted, so ``None`` is an error. ``y`` is not used (the target code says it all).
        Inner-loop helper: inputs are not validated."""
        if target is None:
            raise ValueError("target: retrieval attacks are targeted (AdvHash pushes codes towards "
                             "a target anchor); pass the ±1 target code")
        code = target[0] if target.dim() == 2 else target
        shares, _ = advhash_shares(outputs, code, alpha, converged)
        return shares, self.success(outputs, code, radius)

    def success(self, outputs: Tensor, target_code: Tensor, radius: int = RADIUS) -> Tensor:
        """``N`` bool: ``d_H(sign(outputs), target_code) ≤ radius`` (outputs pre-sign or codes)."""
        return hamming(binarize(outputs.detach()), target_code) <= radius

    def attackable(self, y: Tensor, target: int) -> Tensor:
        """``N`` bool: the queries a targeted attack towards class ``target`` is scored on — those
        whose label (set) does not contain it (AdvHash tests on images of other classes)."""
        return ~has_label(y, target)

    def scores(self, clean_codes: Tensor, adv_codes: Optional[Tensor], y: Tensor, db_codes: Tensor,
               db_labels: Tensor, target: Optional[int], k: int,
               attacked: Optional[Tensor] = None) -> Dict[str, MeanScore]:
        """``{"clean", "clean_attacked", "irrelevant", "relevant"}`` as :class:`MeanScore` (per-query
        AP@k averaged). ``adv_codes`` are the codes of the queries ``y[attacked]`` (in order) after
        the attack; ``None`` (no attack) scores the clean codes of those queries instead.
        ``attacked`` defaults to :meth:`attackable`. Without a ``target`` only ``clean`` is set."""
        from ..metrics.retrieval import average_precision_at_k as ap
        out = {"clean": MeanScore.of(ap(clean_codes, db_codes, y, db_labels, k))}
        if target is None:
            return out
        if attacked is None:
            attacked = self.attackable(y, target)
        attacked = attacked.to(clean_codes.device)
        yq, clean_q = y[attacked.to(y.device)], clean_codes[attacked]
        q = clean_q if adv_codes is None else adv_codes
        if q.shape[0] != yq.shape[0]:
            raise ValueError(f"adv_codes: expected codes of the {yq.shape[0]} attacked queries, got "
                             f"{q.shape[0]}")
        out["clean_attacked"] = MeanScore.of(ap(clean_q, db_codes, yq, db_labels, k))
        tl = target_labels(db_labels, target, yq.shape[0])
        out["irrelevant"] = MeanScore.of(ap(q, db_codes, tl, db_labels, k))
        out["relevant"] = MeanScore.of(ap(q, db_codes, yq, db_labels, k))
        return out

    def cell_metrics(self, clean_codes: Tensor, adv_codes: Optional[Tensor], y: Tensor,
                     db_codes: Tensor, db_labels: Tensor, target: Optional[int], k: int, *,
                     attacked: Optional[Tensor] = None, attacker: str = "none",
                     radius: int = RADIUS, target_code: Optional[Tensor] = None
                     ) -> Dict[str, object]:
        """Flat metrics of one retrieval cell (the codes are those the deployed system sees, i.e.
        behind the cell's defense):

        ``metric`` ("map@k"), ``k``, ``n`` (all queries), ``n_queries`` (attacked queries),
        ``clean`` (+ ``clean_ci``), ``clean_attacked`` (clean mAP@k of the attacked queries),
        ``irrelevant`` (t-mAP@k, + ``irrelevant_ci``), ``relevant`` (+ ``relevant_ci``),
        ``target``, ``asr`` (attacked queries within Hamming ``radius`` of ``target_code``, when
        given; ``asr_n``) and ``attacker``. Numbers that do not apply (no target) are ``None``;
        with a target but no attack (``adv_codes=None``), ``irrelevant``/``relevant`` are those of
        the clean attackable queries (the t-mAP a clean query already has)."""
        s = self.scores(clean_codes, adv_codes, y, db_codes, db_labels, target, k, attacked)
        out: Dict[str, object] = {"metric": "map@k", "k": int(k), "n": int(clean_codes.shape[0]),
                                  "target": target}
        for key in ("clean", "clean_attacked", "irrelevant", "relevant"):
            m = s.get(key)
            out[key] = None if m is None else _none_if_nan(m.value)
            if key != "clean_attacked":
                out[f"{key}_ci"] = None if m is None or m.n == 0 else [m.lo, m.hi]
        out["n_queries"] = s["irrelevant"].n if "irrelevant" in s else 0
        out["asr"], out["asr_n"] = None, 0
        if target is not None and target_code is not None:
            att = self.attackable(y, target) if attacked is None else attacked
            q = clean_codes[att.to(clean_codes.device)] if adv_codes is None else adv_codes
            hit = self.success(q, target_code, radius)
            out["asr"] = float(hit.double().mean()) if hit.numel() else None
            out["asr_n"] = int(hit.numel())
        out["attacker"] = attacker
        return out
