"""Captions of fmnist-scenes, TTH's keywords (plurals and synonyms), the held-out ads, caption files."""
import hashlib
import json
import re

import pytest
import torch
from PIL import Image

from patchbench.data import captions as C
from patchbench.data import caption_files as F
from patchbench.data import retrieval as R
from patchbench.data.fashion_mnist import fashion_mnist_available

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(),
                                  reason="Fashion-MNIST idx files are not installed")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHBENCH_HOME", str(tmp_path / "home"))


# --------------------------------------------------------------------------- keyword matching
def test_the_vocabulary_has_tths_size_and_colours():
    assert len(C.KEYWORDS) == 23 and len(set(C.KEYWORDS)) == 23       # PAIR keeps 23 of TTH's 24
    assert {"blue", "green", "yellow", "pink", "navy", "maroon"} <= set(C.KEYWORDS)
    assert set(C.COLOUR_KEYWORDS) <= set(R.COLOURS)


@pytest.mark.parametrize("caption, keyword, expected", [
    ("two red coats on the left", "coat", True),           # plural (TTH's rule)
    ("a big blue jacket", "coat", True),                    # synonym
    ("three Jackets", "coats", True),                       # a plural keyword, any case
    ("a pair of navy pants", "trousers", True),
    ("a green trouser", "trousers", True),
    ("two dresses", "dress", True), ("a handbag", "bag", True), ("ankle boots", "boot", True),
    ("a white T-shirt", "t-shirt", True), ("pink tops", "t-shirt", True),
    ("a pink t‑shirt", "t-shirt", True),                   # a non-ASCII hyphen
    ("a small sweater", "pullover", True), ("two trainers", "sneaker", True),
    ("a small sweater", "little", True), ("a large bag", "big", True),
    ("a white T-shirt", "shirt", False), ("two T-shirts", "shirt", False),  # not shirts
    ("a coat at the top", "t-shirt", False),                # "top" as a position
    ("a top at the top", "t-shirt", True),
    ("a bag in the top left corner", "t-shirt", False),
    ("a bag in the top-left corner", "left", True),
    ("a red bag at the top", "at the top", True), ("a red top", "at the top", False),
    ("a red bag at the top", "top", False), ("a red top", "top", True),
    ("a bag at the bottom", "bottom", True), ("a bag in the middle", "centre", True),
    ("a bag on the right", "right", True), ("a bag on the left", "right", False),
    ("a navy coat", "blue", False), ("a bluish coat", "blue", False),
    ("a coatrack", "coat", False), ("sandals", "sandal", True),
    ("two coats", "jackets", True), ("a sweater", "pullovers", True),   # a synonym as keyword
    ("a man riding a horse", "horse", True), ("two horses", "horse", True),
    ("an ankle boot", "ankle boot", True), ("an ankle boots", "ankle boot", True),
    ("a boot", "ankle boot", False),
])
def test_keyword_matches_plurals_synonyms_and_positions(caption, keyword, expected):
    assert C.keyword_matches(caption, keyword) is expected


@pytest.mark.parametrize("caption, keyword, error", [
    ("", "coat", ValueError), ("   ", "coat", ValueError), ("a coat", "", ValueError),
    (None, "coat", TypeError), ("a coat", 3, TypeError), ("a coat", "!!", ValueError)])
def test_keyword_matches_refuses_bad_text(caption, keyword, error):
    with pytest.raises(error, match="caption|keyword"):
        C.keyword_matches(caption, keyword)


def test_keywords_stand_for_scene_attributes():
    assert [C.keyword_word(k) for k in ("Coats", "top", "small", "in the middle", "ankle boots",
                                        "horse", "bottom")] == \
        ["coat", "t-shirt", "little", "centre", "boot", None, "bottom"]
    meta = {"items": [{"class": 4, "colour": "white", "size": "big", "position": "top"}]}
    assert C.scene_words(meta) == {"coat", "white", "big", "top"}
    assert C.scene_keywords(meta) == {"coat", "big"}


def test_a_keyword_in_no_caption_is_refused():
    caps = [["a red coat", "a coat"], ["a blue bag"]]
    assert C.captions_with_keyword(caps, "coats") == [(0, "a red coat"), (0, "a coat")]
    assert C.captions_with_keyword(caps, "coat", limit=1) == [(0, "a red coat")]
    with pytest.raises(ValueError, match="'horse' appears in none"):
        C.captions_with_keyword(caps, "horse")
    with pytest.raises(ValueError, match="limit"):
        C.captions_with_keyword(caps, "coat", limit=0)
    with pytest.raises(ValueError, match="caption 1 of image 1 is empty"):
        C.captions_with_keyword([["a coat"], ["a bag", " "]], "coat")
    with pytest.raises(TypeError, match="one list of captions per image"):
        C.captions_with_keyword("a coat", "coat")
    with pytest.raises(TypeError, match="entry 0"):
        C.captions_with_keyword(["a coat"], "coat")


# --------------------------------------------------------------------------- scene captions
@needs_fmnist
def test_five_captions_per_scene_deterministic_and_prefix_stable():
    caps = C.scene_captions("query", n=40)
    assert len(caps) == 40 and all(len(c) == 5 for c in caps)
    assert all(isinstance(t, str) and t.strip() for c in caps for t in c)
    C._split_captions.cache_clear()
    assert C.scene_captions("query", n=40) == caps                      # recomputed: the same
    assert C.scene_captions("query", n=10) == caps[:10]                 # n does not change them
    assert C.scene_captions("query", n=10, seed=1) != caps[:10]
    assert C.scene_captions("database", n=10) != caps[:10]
    assert sum(len(set(c)) for c in caps) == 5 * 40                     # five distinct captions


def test_no_caption_is_longer_than_the_bound():
    # the worst case: three pairs of trousers, big, at the bottom-most places, every template
    items = [{"class": 1, "colour": c, "size": "big", "position": p}
             for c, p in (("maroon", "bottom"), ("orange", "centre"), ("purple", "right"))]
    longest = max(len(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", cap.lower()))
                  for i in range(300) for cap in C.captions_of(
                      {"index": i, "items": items, "background": {"dark": False}}, "train", 0))
    assert longest == C.MAX_CAPTION_WORDS


@needs_fmnist
def test_the_templates_are_pinned_to_the_cache_version():
    # Full splits are cached keyed by CAPTION_VERSION: a template change must bump it (and this).
    digest = hashlib.sha256(json.dumps(C.scene_captions("query", n=20)).encode()).hexdigest()
    assert (C.CAPTION_VERSION, digest[:16]) == (1, "2b7647896bafbde0")


@needs_fmnist
def test_captions_state_only_what_the_scene_holds_and_name_every_item():
    metas = R.scene_metadata("query", n=120)
    for meta, caps in zip(metas, C.scene_captions("query", n=120)):
        held = C.scene_keywords(meta)
        for cap in caps:
            said = {k for k in C.KEYWORDS if C.keyword_matches(cap, k)}
            assert said <= held, (cap, meta["items"])
            for k in ("at the top", "at the bottom", "centre", "white"):
                assert not C.keyword_matches(cap, k) or C.keyword_word(k) in C.scene_words(meta)
            for item in meta["items"]:                                  # every item is named
                assert C.keyword_matches(cap, C.CLASS_KEYWORDS[item["class"]]), cap
        if len(meta["items"]) >= 2:
            assert any(w in " ".join(caps) for w in ("two", "three", " and ", ", with "))


@needs_fmnist
def test_captions_vary_synonyms_sizes_positions_and_counts():
    text = " ".join(t for c in C.scene_captions("query", n=200) for t in c)
    for word in ("jacket", "coat", "T-shirt", "top", "pants", "trousers", "sweater", "pullover",
                 "trainer", "sneaker", "handbag", "boot", "little", "small", "big", "large",
                 "on the left", "at the top", "in the middle", "two ", "three ", "background"):
        assert word in text, word


@needs_fmnist
def test_every_keyword_occurs_in_the_training_captions():
    stats = C.caption_statistics("train", n=300)
    for k in C.KEYWORDS:
        assert stats[k]["captions"] >= 20, (k, stats[k])
        assert stats[k]["images"] <= stats[k]["scenes"]
    pairs = C.keyword_captions("navy", "train", n=300, limit=50)
    assert len(pairs) == 50 and all(C.keyword_matches(c, "navy") for _, c in pairs)
    assert [i for i, _ in pairs] == sorted(i for i, _ in pairs)


@needs_fmnist
def test_keyword_captions_with_a_limit_renders_only_what_it_needs(monkeypatch):
    monkeypatch.setattr(C, "_CHUNK", 40)
    whole = C.captions_with_keyword(C.scene_captions("query", n=200), "orange")
    assert C.keyword_captions("orange", "query", limit=30) == whole[:30]       # chunked
    assert C.keyword_captions("orange", "query", n=200) == whole
    with pytest.raises(ValueError, match="'unicorn' appears in none of the 120"):
        C.keyword_captions("unicorn", "query", n=120, limit=5)
    with pytest.raises(ValueError, match="expected a word"):
        C.keyword_captions("?!", "query", n=120, limit=5)


@needs_fmnist
def test_keyword_captions_refuses_an_absent_keyword_and_bad_splits():
    with pytest.raises(ValueError, match="'unicorn' appears in none"):
        C.keyword_captions("unicorn", "query", n=30)
    with pytest.raises(LookupError, match="split"):
        C.scene_captions("validation", n=3)
    with pytest.raises(ValueError, match="n"):
        C.scene_captions("query", n=10 ** 6)


@needs_fmnist
def test_a_whole_split_is_cached_and_a_damaged_cache_is_recomputed(monkeypatch):
    calls = []
    real = R.scene_metadata
    monkeypatch.setattr(R, "scene_metadata", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setitem(R.SPLITS, "query", ("test", 0, 5000, 30))     # a tiny "whole" split
    C._split_captions.cache_clear()
    first = C.scene_captions("query")
    path = C._cache_path("query", 0)
    assert path.is_file() and json.loads(path.read_text()) == first and len(calls) == 1
    C._split_captions.cache_clear()
    assert C.scene_captions("query", n=5) == first[:5] and len(calls) == 1   # read from the cache
    path.write_text("[[\"garbage\"]")
    C._split_captions.cache_clear()
    assert C.scene_captions("query") == first and len(calls) == 2
    C._split_captions.cache_clear()


# --------------------------------------------------------------------------- the ad pool
@needs_fmnist
@pytest.mark.parametrize("keyword, word", [("blue", "blue"), ("coat", "coat"),
                                           ("little", "little"), ("left", "left"),
                                           ("t-shirt", "t-shirt"), ("jackets", "coat"),
                                           ("at the top", "top"), ("white", "white")])
def test_ad_images_lack_their_keyword_and_are_deterministic(keyword, word):
    assert C.keyword_word(keyword) == word
    pool = C.ad_pool(keyword, n=10, size=32)
    assert pool.images.shape == (10, 3, 32, 32) and pool.images.dtype == torch.float32
    assert float(pool.images.min()) >= 0 and float(pool.images.max()) <= 1
    for meta, caps in zip(pool.metadata, pool.captions):
        assert word not in C.scene_words(meta)
        assert len(caps) == 5 and not any(C.keyword_matches(c, keyword) for c in caps)
        assert all(5000 <= it["source_index"] < 10000 for it in meta["items"])   # reserved items
    assert torch.equal(C.ad_images(keyword, n=10, size=32), pool.images)
    assert torch.equal(C.ad_images(keyword, n=3, size=32), pool.images[:3])


@needs_fmnist
def test_ad_images_are_painted_like_the_scenes_and_differ_by_seed():
    ads = C.ad_pool("blue", n=6)
    assert ads.images.shape == (6, 3, 64, 64)
    assert torch.equal(ads.images, (ads.images * 255).round() / 255)      # 8-bit, like the set
    for meta in ads.metadata:
        for it in meta["items"]:
            top, left, h, w = it["box"]
            assert it["size"] in R.SIZES and it["position"] in R.POSITIONS and h == w
    assert not torch.equal(C.ad_images("blue", n=6, seed=1), ads.images)
    assert ads.indices == sorted(ads.indices) and len(set(ads.indices)) == 6


@needs_fmnist
def test_an_empty_or_oversized_ad_set_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="n"):
        C.ad_images("blue", n=0)
    C._ad_plan.cache_clear(), C._ad_entry.cache_clear()
    monkeypatch.setattr(C, "AD_POOL_SIZE", 30)                       # a small pool, scanned fast
    try:
        lacking = sum("blue" not in C.scene_keywords(C._ad_scene(0, i, None)[0]) for i in range(30))
        assert 0 < lacking < 30
        with pytest.raises(ValueError, match=f"ad pool holds {lacking} scenes without 'blue'"):
            C.ad_images("blue", n=30)
    finally:
        C._ad_plan.cache_clear(), C._ad_entry.cache_clear()
    with pytest.raises(ValueError, match="keyword"):
        C.ad_images("  ", n=2)


# --------------------------------------------------------------------------- caption files
def _image(path, colour):
    Image.new("RGB", (40, 30), colour).save(path)


def test_a_caption_folder_round_trips(tmp_path):
    _image(tmp_path / "b.png", (255, 0, 0))
    (tmp_path / "b.txt").write_text("a red square\nsomething red\n\n")
    _image(tmp_path / "a.jpg", (0, 0, 255))
    (tmp_path / "a.txt").write_text("a blue square")
    (tmp_path / "notes.md").write_text("not an image")
    x, caps = F.load_caption_folder(tmp_path, size=16)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert caps == [["a blue square"], ["a red square", "something red"]]     # sorted by name
    assert float(x[0, 2].mean()) > 0.9 and float(x[1, 0].mean()) > 0.9
    assert C.captions_with_keyword(caps, "red") == [(1, "a red square"), (1, "something red")]


def test_a_caption_folder_refuses_missing_and_empty_captions(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        F.read_caption_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no image files"):
        F.read_caption_folder(tmp_path)
    _image(tmp_path / "a.png", (0, 0, 0))
    with pytest.raises(FileNotFoundError, match="a.txt"):
        F.read_caption_folder(tmp_path)
    (tmp_path / "a.txt").write_text("first\n\nthird\n")
    with pytest.raises(ValueError, match="line 2 .* empty caption"):
        F.read_caption_folder(tmp_path)
    (tmp_path / "a.txt").write_text(" \n")
    with pytest.raises(ValueError, match="no caption"):
        F.read_caption_folder(tmp_path)
    (tmp_path / "a.txt").write_text("ok")
    sub = tmp_path / "sub"
    sub.mkdir()
    _image(sub / "c.png", (9, 9, 9))
    (sub / "c.txt").write_text("deeper")
    assert [c for _, c in F.read_caption_folder(tmp_path, recursive=True)] == [["ok"], ["deeper"]]


def _coco(tmp_path, data):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_a_coco_captions_json_round_trips(tmp_path):
    (tmp_path / "img").mkdir()
    _image(tmp_path / "img" / "1.png", (0, 255, 0))
    _image(tmp_path / "img" / "2.png", (255, 255, 0))
    path = _coco(tmp_path, {"images": [{"id": 7, "file_name": "2.png"},
                                       {"id": 3, "file_name": "1.png"}],
                            "annotations": [{"image_id": 3, "caption": "a green one"},
                                            {"image_id": 7, "caption": "A yellow square. "},
                                            {"image_id": 3, "caption": "green again"}]})
    x, caps = F.load_coco_captions(path, tmp_path / "img", size=(8, 12))
    assert x.shape == (2, 3, 8, 12)
    assert caps == [["A yellow square."], ["a green one", "green again"]]   # the JSON's order
    assert float(x[1, 1].mean()) > 0.9 and float(x[1, 0].mean()) < 0.1
    x1, caps1 = F.load_coco_captions(path, tmp_path / "img", n=1, size=8)
    assert x1.shape == (1, 3, 8, 8) and caps1 == caps[:1]


@pytest.mark.parametrize("data, error, match", [
    ("{not json", ValueError, "not valid JSON"),
    ([], ValueError, "expected an object"),
    ({"images": []}, ValueError, "'annotations'"),
    ({"images": [], "annotations": []}, ValueError, "'images' is empty"),
    ({"images": [{"id": 1}], "annotations": []}, ValueError, "'file_name'"),
    ({"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "a.png"}],
      "annotations": []}, ValueError, "repeats image id 1"),
    ({"images": [{"id": 1, "file_name": "a.png"}],
      "annotations": [{"image_id": 2, "caption": "x"}]}, ValueError, "not in 'images'"),
    ({"images": [{"id": 1, "file_name": "a.png"}],
      "annotations": [{"image_id": 1, "caption": "  "}]}, ValueError, "empty caption"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": []}, ValueError,
     "has no caption"),
    ({"images": [{"id": 1, "file_name": "missing.png"}],
      "annotations": [{"image_id": 1, "caption": "x"}]}, FileNotFoundError, "missing.png"),
])
def test_a_bad_coco_json_is_refused(tmp_path, data, error, match):
    _image(tmp_path / "a.png", (1, 2, 3))
    with pytest.raises(error, match=match):
        F.read_coco_captions(_coco(tmp_path, data))


def test_a_missing_coco_json_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations"):
        F.load_coco_captions(tmp_path / "captions.json")
