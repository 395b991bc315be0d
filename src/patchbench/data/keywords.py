"""TTH's keyword vocabulary for the ``fmnist-scenes`` captions, and what "a caption that contains
the keyword" means (one definition, used by the captions, the ad pool, the text-image task and TTH).

TTH (Hu, Chen & Li, ICASSP 2023, §3.1; PAIR, ACM MM 2024, §5.1, Table 1) picks 24 keywords of
MS-COCO / Flickr30k captions (objects, people, actions, colours: blue, green, yellow, pink, navy,
maroon, ...; PAIR keeps 23); a caption contains a keyword with its plurals (authors' code).

* :data:`KEYWORDS`: 23 keywords — the 10 object classes, 9 colours (TTH's six and red, orange,
  purple; "white" is left out, it only appears on dark backgrounds), the 2 sizes and 2 positions
  ("left", "right"; "top" is a garment too, and "bottom" would have no partner left).
* :func:`keyword_matches`: whole words, any case, plurals (-s, -es, -ies) and :data:`SYNONYMS`
  included (``"coat"`` matches "jackets", a synonym as keyword stands for its keyword). "top" inside
  a position phrase ("at the top", "on top", "top left") is a position, not the garment; the
  keyword "top" is the garment, "at the top" the position ("left", "right", "bottom", "centre" are
  always positions). A free word ("horse") or phrase ("ankle boot") matches with its plurals.
* :func:`captions_with_keyword`: the ``(image index, caption)`` pairs of any caption lists (ours or
  a user's) that contain a keyword, refusing a keyword in no caption and an empty caption.
* :func:`scene_keywords`: the keywords a scene holds, from its metadata.

Example::

    keyword_matches("two little red jackets on the left", "coat")     # True
    keyword_matches("a coat at the top", "t-shirt")                    # False: a position
    captions_with_keyword([["a red coat"], ["a blue bag"]], "coats")   # [(0, 'a red coat')]
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

from .._validation import check_positive_int

__all__ = ["KEYWORDS", "CLASS_KEYWORDS", "COLOUR_KEYWORDS", "SIZE_KEYWORDS", "POSITION_KEYWORDS",
           "SYNONYMS", "keyword_matches", "captions_with_keyword", "scene_keywords", "scene_words",
           "keyword_word"]

#: The 23 keywords: the 10 object classes (in Fashion-MNIST's class order), 9 colours, 2 sizes,
#: 2 positions.
CLASS_KEYWORDS = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                  "bag", "boot")
COLOUR_KEYWORDS = ("blue", "green", "yellow", "pink", "navy", "maroon", "red", "orange", "purple")
SIZE_KEYWORDS = ("little", "big")
POSITION_KEYWORDS = ("left", "right")
KEYWORDS: Tuple[str, ...] = CLASS_KEYWORDS + COLOUR_KEYWORDS + SIZE_KEYWORDS + POSITION_KEYWORDS

#: Words (singular) that count as each keyword. Multi-word synonyms end in a word listed too.
SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "tshirt", "tee", "top"), "trousers": ("trousers", "trouser", "pants"),
    "pullover": ("pullover", "sweater", "jumper"), "dress": ("dress",), "coat": ("coat", "jacket"),
    "sandal": ("sandal",), "shirt": ("shirt",), "sneaker": ("sneaker", "trainer"),
    "bag": ("bag", "handbag"), "boot": ("boot",), "little": ("little", "small"),
    "big": ("big", "large"), "left": ("left",), "right": ("right",)}
_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom",
                   "centre": "centre", "center": "centre", "middle": "centre"}
_PREPOSITIONS = {"the", "at", "on", "in", "to", "near", "towards", "toward"}
_COMPOUNDS = {"t-shirt", "tee-shirt"}       # hyphenated words kept whole ("top-left" is split)
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2212"})
_COMPOUND_FORMS = frozenset(f for c in _COMPOUNDS for f in (c, c + "s"))


def _tokens(caption: str) -> List[str]:
    out = []
    for tok in _TOKEN.findall(caption.lower().translate(_DASHES)):
        out.extend([tok] if "-" not in tok or tok in _COMPOUND_FORMS else tok.split("-"))
    return out


def _positions(tokens: Sequence[str]) -> List[bool]:
    """Which tokens are position words inside a position phrase ("at the top", "top left", "on
    top", "the left one"); "left" / "right" / "centre" always are, "top" / "bottom" only there."""
    flags = [False] * len(tokens)
    for i, tok in enumerate(tokens):
        if tok not in _POSITION_WORDS:
            continue
        prev = tokens[i - 1] if i else ""
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        flags[i] = bool(tok not in ("top", "bottom") or prev in _PREPOSITIONS
                        or (i and flags[i - 1]) or nxt in ("left", "right", "corner", "side"))
    return flags


def _forms(word: str) -> FrozenSet[str]:
    """A word and its plurals (-s, -es, -y → -ies)."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    return frozenset(forms)


_SYNONYM_OF = {w: k for k, words in SYNONYMS.items() for w in words}


def _known(word: str) -> str:
    """The keyword a word or its plural stands for ("jackets" → "coat"); else the word itself."""
    for suffix, repl in (("", ""), ("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and (word[:len(word) - len(suffix)] + repl) in _SYNONYM_OF:
            return _SYNONYM_OF[word[:len(word) - len(suffix)] + repl]
    return word


@lru_cache(maxsize=256)
def _keyword_spec(keyword: str) -> Tuple[str, Tuple[Tuple[str, ...], ...], FrozenSet[str]]:
    """``(kind, phrases, last-word forms)``: kind ``"position"``, ``"word"`` (a known keyword or a
    free word) or ``"phrase"`` (several words: the last takes plurals)."""
    words = tuple(_tokens(keyword))
    if not words:
        raise ValueError(f"keyword: expected a word such as {KEYWORDS[0]!r}, got {keyword!r}")
    if len(words) > 1 and words[-1] in _POSITION_WORDS and words[-2] in _PREPOSITIONS:
        return "position", ((_POSITION_WORDS[words[-1]],),), frozenset()     # "at the top"
    if len(words) == 1:
        key = _known(words[0])
        if key in _POSITION_WORDS:      # "top" is the garment (T-shirt) here: ask "at the top"
            return "position", ((_POSITION_WORDS[key],),), frozenset()
        forms = frozenset().union(*(_forms(w) for w in SYNONYMS.get(key, (key,))))
        return "word", (), forms
    return "phrase", (words[:-1],), _forms(words[-1])


def keyword_matches(caption: str, keyword: str) -> bool:
    """Whether ``caption`` contains ``keyword`` (module docstring): whole words, any case, plurals
    and :data:`SYNONYMS` included; garments never match inside a position phrase ("at the top").

    Raises ``TypeError`` for non-strings and ``ValueError`` for an empty caption or keyword.
    """
    caption, keyword = _check_text(caption, "caption"), _check_text(keyword, "keyword")
    tokens = _tokens(caption)
    return _matches(tokens, _positions(tokens), _keyword_spec(keyword.strip().lower()))


def _matches(tokens: Sequence[str], flags: Sequence[bool], spec) -> bool:
    """:func:`keyword_matches` on a tokenised caption (inner loop: unchecked)."""
    kind, phrases, forms = spec
    if kind == "position":
        want = phrases[0][0]
        return any(f and _POSITION_WORDS[t] == want for t, f in zip(tokens, flags))
    for i, (tok, is_pos) in enumerate(zip(tokens, flags)):
        if tok in forms and not is_pos:
            if kind == "word" or tuple(tokens[max(i - len(phrases[0]), 0):i]) == phrases[0]:
                return True
    return False


def _check_text(text, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{name}: the {name} is empty (got {text!r})")
    return text


def captions_with_keyword(captions: Sequence[Sequence[str]], keyword: str,
                          limit: Optional[int] = None) -> List[Tuple[int, str]]:
    """``(image index, caption)`` for every caption of ``captions`` (one list per image) that
    :func:`keyword_matches` ``keyword``, in image then caption order; the first ``limit`` only.

    Raises ``ValueError`` when no caption contains the keyword (a query set would be empty)."""
    _check_text(keyword, "keyword")
    limit = None if limit is None else check_positive_int(limit, "limit")
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise TypeError(f"captions: expected one list of captions per image, got "
                        f"{type(captions).__name__}")
    out = []
    for i, caps in enumerate(captions):
        if isinstance(caps, str) or not isinstance(caps, Sequence):
            raise TypeError(f"captions: entry {i} must be the list of image {i}'s captions, got "
                            f"{type(caps).__name__}")
        for j, c in enumerate(caps):
            if not isinstance(c, str) or not c.strip():
                raise (TypeError if not isinstance(c, str) else ValueError)(
                    f"captions: caption {j} of image {i} is empty or not a str ({c!r})")
            if keyword_matches(c, keyword):
                out.append((i, c))
                if limit is not None and len(out) >= limit:
                    return out
    if not out:
        raise _absent(keyword, len(captions))
    return out


def _absent(keyword: str, images: int) -> ValueError:
    return ValueError(f"keyword: {keyword!r} appears in none of the {images} images' captions "
                      f"(keywords of the scenes: {', '.join(KEYWORDS)})")


def scene_words(meta: dict) -> FrozenSet[str]:
    """Every word a scene's metadata (:func:`~.retrieval.scene_metadata`) makes true: its items'
    class keywords, colours (white too), sizes and positions (top, bottom and centre too)."""
    found = set()
    for item in meta["items"]:
        found.add(CLASS_KEYWORDS[item["class"]])
        found.update(w for w in (item["colour"], item.get("size"), item.get("position")) if w)
    return frozenset(found)


def scene_keywords(meta: dict) -> FrozenSet[str]:
    """The :data:`KEYWORDS` a scene holds (:func:`scene_words` among them)."""
    return scene_words(meta) & frozenset(KEYWORDS)


def keyword_word(keyword: str) -> Optional[str]:
    """The :func:`scene_words` entry a keyword stands for ("jackets" → "coat", "at the top" →
    "top", "navy" → "navy"), or ``None`` for a word no scene attribute has ("horse")."""
    kind, phrases, _ = _keyword_spec(_check_text(keyword, "keyword").strip().lower())
    if kind == "position":
        return phrases[0][0]
    words = _tokens(keyword)
    if kind == "phrase":
        return "boot" if words == ["ankle", "boot"] or words == ["ankle", "boots"] else None
    from .retrieval import COLOURS, SIZES
    word = _known(words[0])
    return word if word in CLASS_KEYWORDS or word in COLOURS or word in SIZES else None
