"""Captions of the ``fmnist-scenes`` proxy, TTH's keyword vocabulary and its held-out ad images.

TTH (Hu, Chen & Li, "Towards Making a Trojan-horse Attack on Text-to-Image Retrieval", ICASSP 2023,
§2–3; PAIR, ACM MM 2024, §5.1 and Table 1) attacks text-to-image search on MS-COCO / Flickr30k:
the queries are the test captions that contain a *keyword* (an object, a person, an action or a
colour: blue, green, yellow, pink, navy, maroon, ...), its target embedding is the mean text
embedding of up to 500 training captions containing the keyword ("plurals included", authors'
code), and its patch is optimised on 10 *ad images* that do not show the keyword. COCO does not
install offline, so this module writes the captions of our COCO stand-in (:mod:`.retrieval`) from
its scene metadata, and renders the ads from the Fashion-MNIST test items 5 000 .. 9 999 that
:mod:`.retrieval` reserves for them.

* :func:`scene_captions`: five template captions per scene, each naming every item with a random
  synonym of its class (coat/jacket, T-shirt/top, trousers/pants, pullover/sweater, sneaker/trainer,
  bag/handbag, ankle boot/boot; dress, sandal, shirt), and, depending on the template, its colour,
  size ("little"/"small", "big"/"large"), position ("on the left", "at the top", "in the centre"),
  the number of items ("two coats", "three items") and the background. Five of seven templates are
  drawn per scene. Captions state only what the scene holds, so a caption that contains a keyword
  always belongs to a scene that has it (:func:`scene_keywords`). Caption ``j`` of image ``i`` is a
  fixed function of ``(split, seed, i)``, so the first ``n`` do not depend on ``n``.
* :data:`KEYWORDS` (23, as in PAIR) and :func:`keyword_matches` (plurals and synonyms), which
  defines "a caption that contains the keyword" everywhere, live in :mod:`.keywords` and are
  re-exported here.
* :func:`keyword_captions`: the ``(image index, caption)`` pairs of a split that contain a keyword
  (TTH's queries, and its target captions with ``limit=500``); :func:`caption_statistics` counts
  them per keyword.
* :func:`ad_pool` / :func:`ad_images`: held-out scenes, painted like ``fmnist-scenes`` (same
  generator, colours, sizes and layout rules) from the reserved test items, whose scene lacks the
  keyword (no item of its class / colour / size / position); the first ``n`` such scenes of a fixed
  pool of :data:`AD_POOL_SIZE`, with their captions.

Example::

    caps = scene_captions("query", n=2)          # [[5 captions], [5 captions]]
    keyword_matches("two little red jackets on the left", "coat")          # True
    pairs = keyword_captions("blue", "train", limit=500)   # TTH's target-embedding captions
    ads = ad_images("blue", n=10)                 # 10×3×64×64, no blue item in any
"""
from __future__ import annotations

import hashlib
import random
from functools import lru_cache
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._validation import check_int, check_positive_int, check_seed

__all__ = ["KEYWORDS", "CLASS_KEYWORDS", "COLOUR_KEYWORDS", "SIZE_KEYWORDS", "POSITION_KEYWORDS",
           "SYNONYMS", "CAPTIONS_PER_IMAGE", "MAX_CAPTION_WORDS", "AD_POOL_SIZE", "keyword_matches",
           "captions_with_keyword", "scene_keywords", "captions_of", "scene_captions",
           "keyword_captions", "caption_statistics", "AdPool", "ad_pool", "ad_images"]

from .keywords import (CLASS_KEYWORDS, COLOUR_KEYWORDS, KEYWORDS,  # noqa: F401 (re-exported)
                       POSITION_KEYWORDS, SIZE_KEYWORDS, SYNONYMS, _absent, _check_text,
                       _keyword_spec, _matches, _positions, _tokens, captions_with_keyword,
                       keyword_matches, keyword_word, scene_keywords, scene_words)

#: Nouns per class: (singular, plural); "pair(s) of" goes before the adjectives of trousers.
_NOUNS = {0: (("T-shirt", "T-shirts"), ("top", "tops")),
          1: (("pair of |trousers", "pairs of |trousers"), ("pair of |pants", "pairs of |pants")),
          2: (("pullover", "pullovers"), ("sweater", "sweaters")), 3: (("dress", "dresses"),),
          4: (("coat", "coats"), ("jacket", "jackets")), 5: (("sandal", "sandals"),),
          6: (("shirt", "shirts"),), 7: (("sneaker", "sneakers"), ("trainer", "trainers")),
          8: (("bag", "bags"), ("handbag", "handbags")),
          9: (("ankle boot", "ankle boots"), ("boot", "boots"))}
_SIZE_WORDS = {"little": ("little", "small"), "big": ("big", "large")}
_PLACES = {"left": ("on the left",), "right": ("on the right",), "top": ("at the top",),
           "bottom": ("at the bottom",), "centre": ("in the centre", "in the middle")}
_COUNTS = {2: "two", 3: "three"}
CAPTIONS_PER_IMAGE = 5
#: The longest caption, in words (three pairs of trousers in the "with" template): 31 tokens with
#: [SOS] and [EOS], within a 32-token text context.
MAX_CAPTION_WORDS = 29
#: Scenes in the ad pool, painted from Fashion-MNIST test items 5 000 .. 9 999 (3 items at most
#: each, so 1 600 scenes always fit in the 5 000 items).
AD_POOL_SIZE = 1600
_AD_SOURCE = ("test", 5000, 10000)
_CHUNK = 500            # scenes captioned at a time when only ``limit`` matches are needed
#: part of the caption cache key: bump it whenever the templates change
CAPTION_VERSION = 1


# --------------------------------------------------------------------------- caption templates
def _rng(split: str, seed: int, index: int) -> random.Random:
    digest = hashlib.sha256(f"fmnist-scenes-captions/{split}/{seed}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _noun_phrase(rng: random.Random, items: List[dict], colour: bool, size: bool) -> str:
    """One phrase for the items of one class: "a little red coat", "two jackets (a blue one and a
    big pink one)", "a pair of navy trousers"."""
    sing, plur = rng.choice(_NOUNS[items[0]["class"]])

    def adjectives(item):
        words = [rng.choice(_SIZE_WORDS[item["size"]])] if size else []
        return " ".join(words + ([item["colour"]] if colour else []))

    def fill(noun, adj):
        pre, _, head = noun.rpartition("|")
        return pre + (adj + " " if adj else "") + head

    if len(items) == 1:
        return _article(fill(sing, adjectives(items[0])))
    head = f"{_COUNTS[len(items)]} {fill(plur, '')}"
    if not (colour or size):
        return head
    ones = [_article(f"{adjectives(it)} one") for it in items]
    return f"{head} (" + ", ".join(ones[:-1]) + " and " + ones[-1] + ")"


def _join(parts: List[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _groups(rng: random.Random, items: List[dict]) -> List[List[dict]]:
    """The items grouped by class (for counts), in a random order."""
    by_class: Dict[int, List[dict]] = {}
    for it in rng.sample(items, len(items)):
        by_class.setdefault(it["class"], []).append(it)
    return list(by_class.values())


def _caption(rng: random.Random, template: str, meta: dict) -> str:
    items = meta["items"]
    if template in ("list", "photo", "background", "count"):
        colour = template != "count" or rng.random() < 0.5
        size = rng.random() < (0.5 if template != "count" else 0.3)
        phrase = _join([_noun_phrase(rng, g, colour, size) for g in _groups(rng, items)])
        if template == "list":
            return phrase
        if template == "photo":
            return rng.choice(("a photo of ", "a picture of ", "an image showing ")) + phrase
        if template == "background":
            shade = "dark" if meta["background"]["dark"] else "light"
            return f"{phrase} on a {shade} background"
        if len(items) == 1:
            return rng.choice(("a single ", "just one ")) + phrase[phrase.index(" ") + 1:]
        return f"{_COUNTS[len(items)]} {rng.choice(('items', 'things', 'pieces'))}: {phrase}"
    order = rng.sample(items, len(items))
    colour = template != "where" or rng.random() < 0.6
    size = template == "full" or rng.random() < 0.5
    placed = [(_noun_phrase(rng, [it], colour, size), rng.choice(_PLACES[it["position"]]))
              for it in order]
    if template == "full":          # "a little red coat on the left and a big blue bag at the top"
        return _join([f"{np} {place}" for np, place in placed])
    if template == "where":         # "on the left, a red coat; at the top, a bag"
        return "; ".join(f"{place}, {np}" for np, place in placed)
    # "with": "a big pink dress at the top, with a little navy bag on the right"
    (np0, place0), rest = placed[0], placed[1:]
    tail = "" if not rest else ", with " + _join([f"{np} {place}" for np, place in rest])
    return f"{np0} {place0}{tail}"


_TEMPLATES = ("full", "list", "photo", "where", "count", "background", "with")


def captions_of(meta: dict, split: str, seed: int) -> List[str]:
    """The :data:`CAPTIONS_PER_IMAGE` distinct captions of one scene (its metadata, module
    docstring): five templates of seven (a template is tried again, then the next one, when its
    caption repeats an earlier one), drawn from a generator keyed by ``(split, seed, index)``."""
    rng = _rng(split, seed, meta["index"])
    out: List[str] = []
    for template in rng.sample(_TEMPLATES, len(_TEMPLATES)):
        for _ in range(4):              # a repeat of an earlier caption is drawn again
            caption = _caption(rng, template, meta)
            if caption not in out:
                out.append(caption)
                break
        if len(out) == CAPTIONS_PER_IMAGE:
            return out
    raise AssertionError(f"fewer than {CAPTIONS_PER_IMAGE} distinct captions for {meta['items']}")


# --------------------------------------------------------------------------- the scenes' captions
def _check_split(split: str, n: Optional[int]) -> Tuple[str, int]:
    from .retrieval import SPLITS
    from .._validation import check_choice
    split = check_choice(split, "split", tuple(SPLITS))
    total = SPLITS[split][3]
    return split, total if n is None else check_int(n, "n", minimum=0, maximum=total)


def _cache_path(split: str, seed: int):
    from .._io import cache_root
    from .retrieval import RENDER_VERSION
    return cache_root("datasets", f"fmnist-scenes-{split}-seed{seed}-captions-v{CAPTION_VERSION}"
                                  f"-r{RENDER_VERSION}.json")


@lru_cache(maxsize=8)
def _split_captions(split: str, stop: int, seed: int) -> Tuple[Tuple[str, ...], ...]:
    """Captions of images ``0 .. stop - 1``; a whole split is cached as JSON beside the canvases."""
    import json
    from .retrieval import SPLITS, scene_metadata
    whole = stop == SPLITS[split][3]
    path = _cache_path(split, seed)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(cached, list) and len(cached) == SPLITS[split][3] and all(
                isinstance(c, list) and len(c) == CAPTIONS_PER_IMAGE
                and all(isinstance(t, str) and t for t in c) for c in cached):
            return tuple(tuple(c) for c in cached[:stop])
    except (OSError, ValueError):       # missing or damaged: recomputed below
        pass
    if stop == 0:
        return ()
    metas = scene_metadata(split, n=stop, seed=seed)
    caps = tuple(tuple(captions_of(m, split, seed)) for m in metas)
    if whole:
        from .._io import atomic_write_text
        try:
            atomic_write_text(path, json.dumps([list(c) for c in caps]))
        except OSError:                 # a read-only cache: recomputed next time
            pass
    return caps


def scene_captions(split: str, n: Optional[int] = None, seed: int = 0) -> List[List[str]]:
    """Five captions per image of ``load_dataset("fmnist-scenes", split, n)`` (same order, same
    ``seed``); ``n=None``: the whole split (cached under ``$PATCHBENCH_HOME/datasets/``)."""
    split, stop = _check_split(split, n)
    return [list(c) for c in _split_captions(split, stop, check_seed(seed))]


@lru_cache(maxsize=64)
def _chunk_captions(split: str, seed: int, start: int, stop: int) -> Tuple[Tuple[str, ...], ...]:
    """Captions of images ``start .. stop - 1`` (kept for the next keyword)."""
    from .retrieval import scene_metadata
    metas = scene_metadata(split, n=stop - start, offset=start, seed=seed)
    return tuple(tuple(captions_of(m, split, seed)) for m in metas)


def keyword_captions(keyword: str, split: str, n: Optional[int] = None,
                     limit: Optional[int] = None, seed: int = 0) -> List[Tuple[int, str]]:
    """``(image index, caption)`` of the captions of the first ``n`` images of ``split`` (``None``:
    all) that contain ``keyword`` (:func:`keyword_matches`), the first ``limit`` of them.

    TTH's target embedding averages up to 500 training captions (``keyword_captions(kw, "train",
    limit=500)``); its queries are the test captions (``keyword_captions(kw, "query")``). Raises
    ``ValueError`` when the keyword is in no caption."""
    split, stop = _check_split(split, n)
    seed = check_seed(seed)
    limit = None if limit is None else check_positive_int(limit, "limit")
    if limit is None or stop <= _CHUNK or _cache_path(split, seed).is_file():
        return captions_with_keyword(_split_captions(split, stop, seed), keyword, limit)
    _keyword_spec(_check_text(keyword, "keyword").strip().lower())   # a bad keyword raises here
    found: List[Tuple[int, str]] = []
    for start in range(0, stop, _CHUNK):    # render only the scenes needed to reach ``limit``
        chunk = _chunk_captions(split, seed, start, min(start + _CHUNK, stop))
        try:
            found += [(start + i, c) for i, c in captions_with_keyword(chunk, keyword,
                                                                       limit - len(found))]
        except ValueError:                  # none in this chunk
            continue
        if len(found) >= limit:
            return found
    if not found:
        raise _absent(keyword, stop)
    return found


def caption_statistics(split: str, n: Optional[int] = None, seed: int = 0) -> Dict[str, dict]:
    """Per keyword: ``captions`` (how many captions contain it), ``images`` (images with at least
    one such caption) and ``scenes`` (images whose scene holds it, :func:`scene_keywords`)."""
    from .retrieval import scene_metadata
    split, stop = _check_split(split, n)
    seed = check_seed(seed)
    metas = scene_metadata(split, n=stop, seed=seed) if stop else []
    caps = [captions_of(m, split, seed) for m in metas]
    stats = {k: {"captions": 0, "images": 0, "scenes": 0} for k in KEYWORDS}
    specs = {k: _keyword_spec(k) for k in KEYWORDS}
    for cs, meta in zip(caps, metas):
        held = scene_keywords(meta)
        tokenised = [(t, _positions(t)) for t in map(_tokens, cs)]
        for k in KEYWORDS:
            hits = sum(_matches(t, f, specs[k]) for t, f in tokenised)
            stats[k]["captions"] += hits
            stats[k]["images"] += hits > 0
            stats[k]["scenes"] += k in held
    return stats


# --------------------------------------------------------------------------- the ad pool
class AdPool(NamedTuple):
    """Ad images of one keyword: ``images`` ``N×3×size×size`` float in [0, 1], their
    ``captions`` (five each), ``indices`` in the ad pool and ``metadata`` (as scene_metadata's)."""
    images: Tensor
    captions: List[List[str]]
    indices: List[int]
    metadata: List[dict]


@lru_cache(maxsize=2)
def _ad_plan(seed: int) -> Tuple[List[List[int]], Tensor, Tensor]:
    """The source items of every pool scene (a seeded split of test items 5 000 .. 9 999 into
    scenes of 1-3 items, as :func:`~.retrieval._plan` does for the splits), and the items."""
    from .retrieval import _key, _source
    fm_split, lo, hi = _AD_SOURCE
    images, labels = _source(fm_split, None)
    g = torch.Generator().manual_seed(_key(seed, "fmnist-scenes", "ads", "counts"))
    counts = torch.randint(1, 4, (AD_POOL_SIZE,), generator=g).tolist()
    g = torch.Generator().manual_seed(_key(seed, "fmnist-scenes", "ads", "order"))
    order = (lo + torch.randperm(hi - lo, generator=g)).tolist()
    sources, first = [], 0
    for c in counts:
        sources.append(order[first:first + c])
        first += c
    if first > hi - lo:                                   # 3 × AD_POOL_SIZE <= 5 000 by design
        raise RuntimeError("the ad pool needs more source items than are reserved")
    return sources, images, labels


def _ad_scene(seed: int, index: int, size: Optional[int]) -> Tuple[dict, Optional[Tensor]]:
    """The layout (metadata) of pool scene ``index`` and, with ``size``, its uint8 canvas."""
    from .retrieval import _key, _layout, _paint
    sources, images, labels = _ad_plan(seed)
    g = torch.Generator().manual_seed(_key(seed, "fmnist-scenes", "ads", str(index)))
    layout = _layout("fmnist-scenes", g, sources[index], labels)
    canvas = None if size is None else _paint(layout, g, images, _AD_SOURCE[0], size)
    layout.update(index=index, split="ads", source_split=_AD_SOURCE[0])
    return layout, canvas


@lru_cache(maxsize=2 * AD_POOL_SIZE)
def _ad_entry(seed: int, index: int) -> Tuple[dict, Tuple[str, ...]]:
    """The metadata and captions of pool scene ``index`` (computed on first use)."""
    meta = _ad_scene(seed, index, None)[0]
    return meta, tuple(captions_of(meta, "ads", seed))


def ad_pool(keyword: str, n: int = 10, size: int = 64, seed: int = 0) -> AdPool:
    """The first ``n`` scenes of the ad pool (:data:`AD_POOL_SIZE` scenes painted like
    ``fmnist-scenes`` from the reserved Fashion-MNIST test items 5 000 .. 9 999) that lack
    ``keyword``: no item has the class / colour / size / position it stands for
    (:func:`~.keywords.keyword_word`), and none of the scene's captions contains it (for a word no
    scene attribute has, only the latter). Deterministic in ``seed``.

    Raises ``ValueError`` for ``n < 1`` (an empty ad set) or more ads than the pool holds."""
    from .retrieval import check_size
    kw = _check_text(keyword, "keyword").strip().lower()
    word = keyword_word(kw)
    n, size, seed = check_positive_int(n, "n"), check_size(size), check_seed(seed)
    chosen, captions = [], []
    for index in range(AD_POOL_SIZE):
        meta, caps = _ad_entry(seed, index)
        if word in scene_words(meta) or any(keyword_matches(c, kw) for c in caps):
            continue
        chosen.append(meta["index"])
        captions.append(list(caps))
        if len(chosen) == n:
            break
    if len(chosen) < n:
        raise ValueError(f"n: the ad pool holds {len(chosen)} scenes without {keyword!r}, "
                         f"asked for {n}")
    scenes = [_ad_scene(seed, i, size) for i in chosen]
    images = torch.stack([c for _, c in scenes]).float().div_(255.0)
    return AdPool(images, captions, chosen, [m for m, _ in scenes])


def ad_images(keyword: str, n: int = 10, size: int = 64, seed: int = 0) -> Tensor:
    """``N×3×size×size`` ad images whose scene lacks ``keyword`` (:func:`ad_pool`'s images)."""
    return ad_pool(keyword, n, size, seed).images
