"""Text-to-image search poisoned by Trojan-horse ad images (TTH: Hu, Chen & Li, "Towards Making a
Trojan-horse Attack on Text-to-Image Retrieval", ICASSP 2023; PAIR, ACM MM 2024, §5.1 and Table 1).

The model is a CLIP-style dual encoder (:class:`patchbench.models.text_image.TextImageModel`); search
ranks the gallery images by the cosine of their embedding to a caption's. The threat model is
*poisoning*: the attacker's ad images, each carrying one universal patch, are added to the gallery;
the queries are captions, never images.

Objective (TTH; the authors' ``tth_patch_multi_carrier``): pull every patched ad's embedding towards
the target embedding ``e_t`` of the keyword, i.e. minimise ``mean_i (1 − cos(F_i(x'_i), e_t))``;
:meth:`TextImage.objective` returns ``cos − 1`` per image (to maximise). ``e_t``
(:func:`target_embedding`) is the normalised mean text embedding of up to 500 *training* captions that
contain the keyword (a random subset when more match, as the authors' ``random.sample``).
:func:`target_clusters` gives ``n`` sub-concept targets instead (our stronger TTH, not the paper's).

Per-image success (our choice, stated here; TTH reports only R@K): the patched ad's cosine to
``e_t`` reaches ``threshold`` — the evaluation cell passes the ``k``-th best cosine between ``e_t``
and the clean gallery, so success means "this ad enters the top ``k`` of a search for ``e_t``
itself"; without a threshold, success means the patch moved the ad closer to ``e_t`` than it was.

Cell metrics (:meth:`TextImage.cell_metrics`; TTH's evaluation, PAIR Table 1), over the queries =
the test captions containing the keyword, each relevant to its own gallery image:

* ``clean``: R@k of those queries on the clean gallery (their own image in the top ``k``);
* ``irrelevant``: the share of queries with *any* ad image in their top ``k`` once the ads are in
  the gallery (lower is better for a defense);
* ``relevant``: the share whose own image stays in the top ``k`` once the ads are in (higher is
  better).

Ties: an ad wins a tie against a real image (``irrelevant``), the true image loses one
(``clean``/``relevant``): both pessimistic for the defender (:mod:`patchbench.metrics.retrieval`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_positive_int, make_generator
from .base import Task, register

TOPK = 10              # R@10, TTH and PAIR Table 1
TARGET_CAPTIONS = 500  # captions averaged into e_t (the authors' random.sample(..., 500))


def keyword_matches(caption: str, keyword: str) -> bool:
    """Whether ``caption`` contains ``keyword`` (plurals and synonyms included): the captions
    module's rule (:func:`patchbench.data.captions.keyword_matches`), imported when first used."""
    from ..data.captions import keyword_matches as match
    return bool(match(caption, keyword))


def check_keyword(keyword, name: str = "keyword") -> str:
    """A non-empty keyword string (stripped)."""
    if not isinstance(keyword, str):
        raise TypeError(f"{name}: expected a keyword string such as 'coat', got "
                        f"{type(keyword).__name__}")
    if not keyword.strip():
        raise ValueError(f"{name}: expected a non-empty keyword, got {keyword!r}")
    return keyword.strip()


def check_captions(captions, name: str = "captions") -> List[str]:
    """A non-empty list (or tuple) of non-empty caption strings."""
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)):
        raise TypeError(f"{name}: expected a list of caption strings, got "
                        f"{type(captions).__name__}")
    if not captions:
        raise ValueError(f"{name}: the caption list is empty")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise TypeError(f"{name}[{i}]: expected a caption string, got {type(c).__name__}")
        if not c.strip():
            raise ValueError(f"{name}[{i}]: the caption is empty")
    return list(captions)


def check_gallery_captions(captions, m: int, name: str = "gallery captions") -> List[List[str]]:
    """``m`` entries, one per gallery image: a caption string or a list of them (5 per image in the
    scenes set); returned as ``m`` lists of strings."""
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)):
        raise TypeError(f"{name}: expected one caption (or a list of captions) per gallery image, "
                        f"got {type(captions).__name__}")
    if len(captions) != m:
        raise ValueError(f"{name}: {m} gallery images need {m} caption entries, got "
                         f"{len(captions)}")
    out = []
    for i, entry in enumerate(captions):
        entry = [entry] if isinstance(entry, str) else entry
        if not isinstance(entry, (list, tuple)):
            raise TypeError(f"{name}[{i}]: expected a caption string or a list of them, got "
                            f"{type(entry).__name__}")
        out.append(check_captions(entry, f"{name}[{i}]") if entry else [])
    return out


def keyword_queries(gallery_captions: Sequence[Sequence[str]], keyword: str
                    ) -> Tuple[List[str], Tensor]:
    """The TTH queries: every gallery caption containing ``keyword`` and its own image's index.

    Returns ``(captions, image_index)`` with ``image_index`` a long tensor of gallery indices.
    Raises ``ValueError`` naming ``keyword`` when no caption contains it."""
    caps, idx = [], []
    for i, entry in enumerate(gallery_captions):
        for c in entry:
            if keyword_matches(c, keyword):
                caps.append(c)
                idx.append(i)
    if not caps:
        n = sum(len(e) for e in gallery_captions)
        raise ValueError(f"keyword: {keyword!r} appears in none of the {n} gallery captions; there "
                         f"is no query to search with")
    return caps, torch.tensor(idx, dtype=torch.long)


def encode_text_batched(model, captions: List[str], batch_size: int = 256) -> Tensor:
    """``model.encode_text`` over ``captions`` in batches, without gradients → ``N×D``."""
    with torch.no_grad():
        return torch.cat([model.encode_text(captions[i:i + batch_size]).detach()
                          for i in range(0, len(captions), batch_size)])


def target_embedding(model, captions, keyword: str, limit: int = TARGET_CAPTIONS,
                     generator=None, batch_size: int = 256) -> Tensor:
    """TTH's target ``e_t``: the L2-normalised mean text embedding of up to ``limit`` captions of
    ``captions`` (the attacker's *training* captions) that contain ``keyword``.

    When more than ``limit`` match, a random subset of ``limit`` is drawn with ``generator`` (the
    authors' ``random.sample(..., 500)``); otherwise all of them are used. Returns ``D`` floats.
    ``ValueError`` naming ``keyword`` when no caption contains it."""
    hits = _target_captions(captions, keyword, limit, make_generator(generator),
                            "target embedding e_t is")
    emb = encode_text_batched(model, hits, check_positive_int(batch_size, "batch_size"))
    return F.normalize(emb.float().mean(0), dim=0)


def _target_captions(captions, keyword: str, limit, g: torch.Generator, what: str) -> List[str]:
    """The (checked) training captions with ``keyword``, a random ``limit`` of them (drawn with
    ``g``) when more match: the captions both target forms embed."""
    captions = check_captions(captions, "train_captions")
    keyword = check_keyword(keyword)
    limit = check_positive_int(limit, "limit")
    hits = [c for c in captions if keyword_matches(c, keyword)]
    if not hits:
        raise ValueError(f"keyword: {keyword!r} appears in none of the {len(captions)} training "
                         f"captions; its {what} undefined")
    if len(hits) > limit:
        order = torch.randperm(len(hits), generator=g, device=g.device)[:limit].tolist()
        hits = [hits[i] for i in sorted(order)]
    return hits


def target_clusters(model, captions, keyword: str, n: int, limit: int = TARGET_CAPTIONS,
                    generator=None, iterations: int = 30, batch_size: int = 256) -> Tensor:
    """``n`` target embeddings for one keyword (our stronger TTH, ``TTH(targets="clusters")``; not
    in the paper): spherical k-means (Dhillon & Modha 2001: cosine assignment, normalised means)
    of the unit text embeddings of up to ``limit`` training captions that contain ``keyword``,
    drawn as :func:`target_embedding` draws them. The centres start at ``n`` captions drawn with
    ``generator`` and run ``iterations`` rounds; an emptied cluster keeps its centre. Returns
    ``n×D`` unit vectors, ordered by cluster size (largest first; ties by index).

    Why: on a small proxy model the mean of many specific captions lies far from each of them
    (the query's cosine to e_t is below the cosine of its 10th-best gallery image), so ads pulled
    to one e_t win few queries; ads pulled to ``n`` sub-concepts cover more of them.
    ``ValueError`` when no caption contains ``keyword`` or fewer than ``n`` do."""
    n = check_positive_int(n, "n")
    iterations = check_positive_int(iterations, "iterations")
    g = make_generator(generator)
    hits = _target_captions(captions, keyword, limit, g, "target embeddings are")
    if len(hits) < n:
        raise ValueError(f"n: {n} target clusters need at least {n} training captions with "
                         f"{keyword!r}, found {len(hits)}")
    emb = F.normalize(encode_text_batched(model, hits, check_positive_int(batch_size,
                                                                       "batch_size")).float(), dim=1)
    start = torch.randperm(emb.shape[0], generator=g, device=g.device)[:n].to(emb.device)
    centres = emb[start].clone()
    for _ in range(iterations):
        assign = (emb @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, emb)
        counts = torch.bincount(assign, minlength=n)
        moved = F.normalize(sums, dim=1)
        new = torch.where((counts > 0)[:, None], moved, centres)
        if torch.equal(new, centres):
            break
        centres = new
    counts = torch.bincount((emb @ centres.T).argmax(1), minlength=n)
    order = sorted(range(n), key=lambda j: (-int(counts[j]), j))
    return centres[order]


def cosine_to(embeddings: Tensor, target: Tensor) -> Tensor:
    """``N`` cosines of ``N×D`` embeddings to one ``D`` target, or row by row to ``N×D`` targets
    (both normalised here; the protocol already returns unit vectors, an EOT mean of them is not).
    Inner-loop helper."""
    if target.dim() == 2 and target.shape[0] > 1:
        return (F.normalize(embeddings, dim=1) * F.normalize(target.to(embeddings.dtype),
                                                             dim=1)).sum(1)
    t = target.reshape(-1).to(embeddings.dtype)
    return F.normalize(embeddings, dim=1) @ F.normalize(t, dim=0)


class ImageEmbedder(nn.Module):
    """A :class:`~patchbench.models.text_image.TextImageModel`'s image encoder as a module
    ``x → N×D`` unit embeddings, so :class:`patchbench.defenses.Defended` can put a defense in
    front of it (the adaptive attacker's victim).

    ``bits = embed_dim``: ``Defended`` keys on ``bits`` to take its hasher path, which purifies,
    runs the model and, for a randomised defense in attack mode, averages the real-valued outputs
    over ``eot_samples`` draws (EOT, Athalye et al. 2018 §4.3) — here the embeddings — and refuses
    prediction-level defenses. Nothing here binarises."""

    def __init__(self, model):
        super().__init__()
        if not callable(getattr(model, "encode_image", None)):
            raise TypeError(f"model: expected a text-image model (TextImageModel protocol: "
                            f"encode_image, encode_text), got {type(model).__name__}")
        self.model = model      # registered as a submodule when it is an nn.Module
        self.embed_dim = int(getattr(model, "embed_dim"))
        self.bits = self.embed_dim
        self.channels = int(getattr(model, "channels", 3))
        self.input_size = getattr(model, "input_size", None)
        self.name = f"{getattr(model, 'name', type(model).__name__)}:image"
        self.train(bool(getattr(model, "training", False)))   # keep the model's own mode

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode_image(x)


@register("text-image")
class TextImage(Task):
    """Text-to-image search (TTH / PAIR Table 1): the model is a dual encoder, the outputs of an
    attacked image are its ``N×D`` embeddings, the target the keyword's embedding ``e_t``."""

    outputs = "N×D image embeddings (TextImageModel.encode_image)"

    def objective(self, outputs: Tensor, y=None, target: Optional[Tensor] = None, *,
                  threshold: Optional[float] = None, clean_cos: Optional[Tensor] = None
                  ) -> Tuple[Tensor, Tensor]:
        """Per image: ``cos(F(x'), e_t) − 1`` (to maximise; its negative mean is TTH's loss) and
        success (cosine ≥ ``threshold``; without one, cosine > ``clean_cos``, else > 0).
        ``y`` is not used. Inner-loop helper: inputs are not validated."""
        if target is None:
            raise ValueError("target: TTH is targeted; pass the keyword's target embedding e_t "
                             "(patchbench.tasks.text_image.target_embedding)")
        cos = cosine_to(outputs, target)
        with torch.no_grad():
            if threshold is not None:
                ok = cos >= threshold
            elif clean_cos is not None:
                ok = cos > clean_cos.to(cos.device)
            else:
                ok = cos > 0
        return cos - 1.0, ok

    def scores(self, sim_clean: Tensor, true_index: Tensor, k: int,
               sim_poisoned: Optional[Tensor] = None, ad_mask: Optional[Tensor] = None
               ) -> Dict[str, "object"]:
        """``{"clean", "irrelevant", "relevant"}`` as :class:`patchbench.metrics.Rate` (per-query
        hits over the ``Q`` queries). ``sim_clean`` ``Q×M`` (queries × clean gallery),
        ``true_index`` ``Q`` gallery indices; ``sim_poisoned`` ``Q×(M+A)`` with the ads marked by
        ``ad_mask`` (``M+A`` bool). Without ads only ``clean`` is set."""
        from ..metrics.classification import Rate
        from ..metrics.retrieval import irrelevant_recall_at_k, relevant_recall_at_k
        n = int(sim_clean.shape[0])

        def rate(v: float):
            return Rate.of(int(round(v * n)), n)

        out = {"clean": rate(relevant_recall_at_k(sim_clean, true_index, k))}
        if sim_poisoned is not None:
            out["irrelevant"] = rate(irrelevant_recall_at_k(sim_poisoned, ad_mask, k))
            out["relevant"] = rate(relevant_recall_at_k(sim_poisoned, true_index, k))
        return out

    def cell_metrics(self, sim_clean: Tensor, true_index: Tensor, k: int,
                     sim_poisoned: Optional[Tensor] = None, ad_mask: Optional[Tensor] = None, *,
                     keyword: Optional[str] = None, attacker: str = "none") -> Dict[str, object]:
        """Flat metrics of one text-image cell (similarities as the deployed system sees them,
        i.e. on the gallery behind the cell's defense): ``task`` ("text-image"), ``metric``
        ("r@k"), ``k``, ``keyword``, ``n_queries``, ``clean`` / ``irrelevant`` / ``relevant``
        (each with ``*_ci``, the 95 % Wilson interval; ``None`` without ads), ``n_gallery``,
        ``n_ads`` and ``attacker``."""
        s = self.scores(sim_clean, true_index, k, sim_poisoned, ad_mask)
        out: Dict[str, object] = {"task": self.name, "metric": f"r@{int(k)}", "k": int(k),
                                  "keyword": keyword, "n_queries": int(sim_clean.shape[0])}
        for key in ("clean", "irrelevant", "relevant"):
            r = s.get(key)
            out[key] = None if r is None else r.value
            out[f"{key}_ci"] = None if r is None else [r.lo, r.hi]
        out["n_gallery"] = int(sim_clean.shape[1])
        out["n_ads"] = 0 if ad_mask is None else int(ad_mask.sum())
        out["attacker"] = attacker
        return out
