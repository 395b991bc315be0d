"""The retrieval proxies: canvases of real Fashion-MNIST items, deterministic, from disjoint sources."""
import pytest
import torch

import patchbench as pb
from patchbench.data import retrieval as R
from patchbench.data.fashion_mnist import fashion_mnist_available

pytestmark = pytest.mark.skipif(not fashion_mnist_available(),
                                reason="Fashion-MNIST idx files are not installed")


@pytest.mark.parametrize("name", R.DATASETS)
def test_canvases_are_rgb_images_in_unit_range_with_their_labels(name):
    x, y = pb.data.load_dataset(name, split="query", n=12, size=32)
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x, (x * 255).round() / 255)                  # 8-bit canvases
    meta = R.retrieval_metadata(name, "query", n=12, size=32)
    classes = [sorted({it["class"] for it in m["items"]}) for m in meta]
    if name == "fmnist-objects":
        assert y.shape == (12,) and y.dtype == torch.long
        assert y.tolist() == [c[0] for c in classes]
    else:
        assert y.shape == (12, 10) and y.dtype == torch.long and set(y.unique().tolist()) <= {0, 1}
        assert [row.nonzero()[:, 0].tolist() for row in y] == classes
        assert all(1 <= len(m["items"]) <= 3 for m in meta)


@pytest.mark.parametrize("name", R.DATASETS)
def test_same_seed_same_canvases_and_a_prefix_does_not_depend_on_n(name):
    a, ya = R.load_retrieval(name, "database", 6, size=32, seed=3)
    b, yb = R.load_retrieval(name, "database", 3, size=32, seed=3)
    assert torch.equal(a[:3], b) and torch.equal(ya[:3], yb)
    c, _ = R.load_retrieval(name, "database", 6, size=32, seed=4)
    assert not torch.equal(a, c)
    x, _ = pb.data.load_dataset(name, split="database", n=2, offset=4, size=32, seed=3)
    assert torch.equal(x, a[4:6])


def _sources(name, split, seed=0):
    """Every Fashion-MNIST item a whole split uses (from its plan; nothing is painted)."""
    _, labels = R._source(R.SPLITS[split][0], None)
    first, counts = R._plan(name, split, seed)
    order = R._order(name, split, seed, labels)
    return order[:int(first[-1] + counts[-1])], labels


@pytest.mark.parametrize("name", R.DATASETS)
def test_train_database_and_query_never_share_a_source_item(name):
    used = {}
    for split, (fm_split, lo, hi, n) in R.SPLITS.items():
        src, labels = _sources(name, split)
        assert src.unique().numel() == src.numel()                  # no item twice in a split
        assert lo <= int(src.min()) and int(src.max()) < hi
        used[split] = {(fm_split, int(i)) for i in src}
        if name == "fmnist-objects":                                # exactly balanced classes
            assert torch.bincount(labels[src], minlength=10).tolist() == [n // 10] * 10
    assert not used["train"] & used["database"] and not used["train"] & used["query"]
    assert not used["database"] & used["query"]
    meta = R.retrieval_metadata(name, "query", n=5)
    src, _ = _sources(name, "query")
    assert [it["source_index"] for m in meta for it in m["items"]] == \
        src[:sum(len(m["items"]) for m in meta)].tolist()


def test_the_painted_item_is_the_real_fashion_mnist_item():
    from patchbench.data.fashion_mnist import load_fashion_mnist
    xs, ys = load_fashion_mnist("test")
    meta = R.retrieval_metadata("fmnist-objects", "query", n=20, size=64)
    x, _ = R.load_retrieval("fmnist-objects", "query", 20, size=64)
    for m, img in zip(meta, x):
        item = m["items"][0]
        top, left, h, w = item["box"]
        grey = torch.nn.functional.interpolate(xs[item["source_index"]][None], size=(h, w),
                                               mode="bilinear", antialias=h < 28)[0, 0]
        # the canvas inside the box is a blend of background and item colour weighted by the item
        dist = (img[:, top:top + h, left:left + w] - torch.tensor(m["background"]["rgb"])
                .view(3, 1, 1)).abs().sum(0)
        assert torch.corrcoef(torch.stack([dist.flatten(), grey.flatten()]))[0, 1] > 0.8
        assert ys[item["source_index"]] == item["class"]


def test_scene_items_carry_caption_words_and_stay_apart():
    meta = R.scene_metadata("train", n=60, size=64)
    for m in meta:
        for it in m["items"]:
            assert it["colour"] in R.COLOURS and it["size"] in R.SIZES
            assert it["position"] in R.POSITIONS
            top, left, h, w = it["box"]
            assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 64
        boxes = [it["box_fraction"] for it in m["items"]]
        assert all(R._overlap(boxes[i], boxes[j]) <= 0.1 for i in range(len(boxes))
                   for j in range(i))
        assert len({it["position"] for it in m["items"]}) == len(m["items"])
    sizes = {it["size"] for m in meta for it in m["items"]}
    assert sizes == {"little", "big"}


def test_outside_every_item_a_noise_free_canvas_is_its_background():
    x, _ = R.load_retrieval("fmnist-scenes", "query", 30, size=48)
    meta = R.scene_metadata("query", n=30, size=48)
    checked = 0
    for img, m in zip(x, meta):
        if m["background"]["noise"]:
            continue
        outside = torch.ones(48, 48, dtype=torch.bool)
        for it in m["items"]:
            top, left, h, w = it["box"]
            outside[top:top + h, left:left + w] = False
        bg = torch.tensor(m["background"]["rgb"]).view(3, 1)
        assert (img[:, outside] - bg).abs().max() <= 0.5 / 255 + 1e-6
        checked += 1
    assert checked >= 5


def test_registry_specs_and_recorded_statistics():
    for name in R.DATASETS:
        info = pb.data.dataset_info(name)
        assert info["task"] == "retrieval" and info["channels"] == 3 and info["size"] == (64, 64)
        assert info["sizes"] == {"train": 10000, "database": 2000, "query": 1000}
        assert info["num_classes"] == 10
        x, _ = R.load_retrieval(name, "train", 300, size=64)
        flat = x.permute(1, 0, 2, 3).reshape(3, -1)
        assert torch.allclose(flat.mean(1), torch.tensor(info["mean"]), atol=0.03)
        assert torch.allclose(flat.std(1), torch.tensor(info["std"]), atol=0.03)
    stats = R.dataset_statistics("fmnist-scenes", "query", n=300)
    assert set(stats["items_per_image"]) == {1, 2, 3} and 1.7 < stats["mean_items"] < 2.3


def test_a_whole_split_is_cached_and_reloads_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHBENCH_HOME", str(tmp_path))
    a, ya = R.load_retrieval("fmnist-objects", "query", None, size=16)
    path = R._cache_path("fmnist-objects", "query", 0, 16)
    assert path.is_file() and a.shape == (1000, 3, 16, 16)
    b, yb = R.load_retrieval("fmnist-objects", "query", None, size=16)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    c, _ = R.load_retrieval("fmnist-objects", "query", 7, size=16)   # a rendered prefix agrees
    assert torch.equal(c, a[:7])


@pytest.mark.parametrize("call,error,match", [
    (lambda: pb.data.load_dataset("fmnist-objects", split="test"), LookupError, "split"),
    (lambda: pb.data.load_dataset("fmnist-objects", split="query", n=1001), ValueError, "^n: "),
    (lambda: pb.data.load_dataset("fmnist-objects", split="query", n=2, size=8), ValueError, "size"),
    (lambda: pb.data.load_dataset("fmnist-scenes", split="query", n=2, size=(32, 48)), ValueError,
     "square"),
    (lambda: pb.data.load_dataset("fmnist-scenes", split="query", n=2, seed=-1), ValueError, "seed"),
    (lambda: pb.data.load_dataset("fmnist-scenes", split="query", n=2, colour="red"), TypeError,
     "colour"),
    (lambda: R.retrieval_metadata("fmnist-objects", "query", n=5, offset=998), ValueError, "^n: "),
    (lambda: R.retrieval_metadata("imagenet", "query"), LookupError, "name"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
