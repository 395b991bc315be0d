"""Held-out universal patches, placements, prediction-referenced labels and the success-vs-iterations
curve in classification grids (bench/heldout.py, bench/steps.py), and the bundled demo experiment.

Claims checked: a universal patch (Brown et al. 2017) is trained on the ``train`` images only and
scored on the held-out ones (the cell's numbers equal fitting and applying it by hand on exactly those
images); a ``-1`` label is replaced by the model's clean prediction and counted; attack success counts
only the images the model classifies correctly; the success after t iterations of masked PGD equals the
success of a t-step run from the same start (PatchZero §4.1's attack is a deterministic ascent)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from patchbench.bench import config as C
from patchbench.bench.grid import expand
from patchbench.bench.runner import run_experiment
from patchbench.bench.store import ResultsStore

pytest.importorskip("patchbench.data.fashion_mnist")


def _have_fmnist() -> bool:
    try:
        from patchbench.data.fashion_mnist import load_fashion_mnist
        load_fashion_mnist("test", limit=1)
        return True
    except (FileNotFoundError, OSError, ValueError, LookupError):
        return False


needs_fmnist = pytest.mark.skipif(not _have_fmnist(), reason="Fashion-MNIST is not installed "
                                  "(apt-get install dataset-fashion-mnist)")
UNLABELLED = "fmnist-some-unlabelled"


def _loader(split, stop, root=None):
    """Fashion-MNIST with every third label -1 (reference = the model's prediction)."""
    from patchbench.data.fashion_mnist import load_fashion_mnist
    x, y = load_fashion_mnist(split, limit=stop)
    y = y.clone()
    y[::3] = -1
    return x, y


@pytest.fixture(scope="module", autouse=True)
def unlabelled_dataset():
    from patchbench.data import registry as R
    from patchbench.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
    R._register_builtins()
    R.register(R.DatasetSpec(UNLABELLED, _loader, {"train": 60000, "test": 10000}, 1, (28, 28),
                             FASHION_MNIST_MEAN, FASHION_MNIST_STD, 10))
    yield
    R._DATASETS.pop(UNLABELLED, None)


HEAD = """
[experiment]
name = "t"
threads = 1
"""
UNI = HEAD + """
[grid]
models = ["fmnist_cnn_small"]
datasets = [{ name = "DATA", split = "test", n = 6, train = TRAIN, placements = P }]
attacks = [ATTACK]
threats = [{ area = 0.1, shape = "circle" }]
"""
GOOD_ATTACK = '{ name = "universal-patch", epochs = 2, batch_size = 8, lr = 0.2, eot = { rotation = 10, scale = [0.9, 1.1] } }'


def _uni(tmp_path, data=UNLABELLED, train='{ split = "train", n = 10 }', p="3", attack=GOOD_ATTACK,
         extra=""):
    text = (UNI.replace("DATA", data).replace("TRAIN", train).replace("P", p)
            .replace("ATTACK", attack)) + extra
    f = tmp_path / "exp.toml"
    f.write_text(text)
    return f


# ---- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, where, kind", [
    ({"train": '{ split = "validation" }'}, "grid.datasets[0].train.split", LookupError),
    ({"train": '{ split = "train", colour = 1 }'}, "grid.datasets[0].train", ValueError),
    ({"train": '{ split = "train", n = 0 }'}, "grid.datasets[0].train.n", ValueError),
    ({"train": '{ split = "train", n = 70000 }'}, "grid.datasets[0].train.n", ValueError),
    ({"train": '{ split = "test", offset = 3 }'}, "grid.datasets[0].train", ValueError),
    ({"p": "0"}, "grid.datasets[0].placements", ValueError),
    ({"p": '"three"'}, "grid.datasets[0].placements", TypeError),
    ({"attack": '{ name = "masked-pgd", steps = 2 }'}, "grid.attacks", ValueError),
    ({"attack": '"none"'}, "grid.datasets[0].train", ValueError),
    ({"attack": '{ name = "universal-patch", eot = { spin = 3 } }'}, "grid.attacks[0]", TypeError),
    ({"attack": '{ name = "universal-patch", eot = { rotation = -3 } }'}, "grid.attacks[0]",
     ValueError),
    ({"extra": 'adaptive = [true]\ndefenses = ["none", "jpeg"]\n'}, "grid.adaptive", ValueError),
])
def test_bad_heldout_fields_are_refused_with_their_table_path(tmp_path, kw, where, kind):
    with pytest.raises(kind) as e:
        C.load(_uni(tmp_path, **kw))
    assert "exp.toml" in str(e.value) and where in str(e.value)


def test_same_split_needs_disjoint_ranges_and_all_overlaps_everything(tmp_path):
    ok = C.load(_uni(tmp_path, train='{ split = "test", offset = 6, n = 10 }'))
    assert ok.grids[0].datasets[0].options["train"] == {"split": "test", "offset": 6, "n": 10}
    for train in ('{ split = "test", offset = 5, n = 10 }', '{ split = "test" }'):
        with pytest.raises(ValueError, match="overlap"):
            C.load(_uni(tmp_path, train=train))
    text = (HEAD + '[grid]\nmodels = ["mobilenet_v2"]\n'
            'datasets = [{ name = "photos", split = "test", train = { split = "all" } }]\n'
            'attacks = [{ name = "universal-patch" }]\n')
    f = tmp_path / "all.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match="grid.datasets.0..train.split.*'all'"):
        C.load(f)


def test_attack_batch_and_heldout_fields_are_in_the_key_only_where_given(tmp_path):
    cell = expand(C.load(_uni(tmp_path)))[0]
    base = cell.config
    assert base["dataset_options"]["train"] == {"split": "train", "offset": 0, "n": 10}
    assert base["dataset_options"]["placements"] == 3 and "attack_batch" not in base
    assert expand(C.load(_uni(tmp_path, p="2")))[0].key != cell.key
    f = tmp_path / "b.toml"
    f.write_text(_uni(tmp_path).read_text().replace("threads = 1", "threads = 1\nattack_batch = 4"))
    batched = expand(C.load(f))[0]
    assert batched.config["attack_batch"] == 4 and batched.key != cell.key
    f.write_text(_uni(tmp_path).read_text().replace("threads = 1", "threads = 1\nattack_batch = 0"))
    with pytest.raises(ValueError, match="experiment.attack_batch"):
        C.load(f)


# ---- end to end ------------------------------------------------------------------------------------
def _records(out: Path):
    with ResultsStore(out, readonly=True) as store:
        return store.records()


def _model():
    import patchbench as pb
    return pb.models.load("fmnist_cnn_small").eval()


@needs_fmnist
def test_heldout_universal_cell_trains_on_train_only_and_scores_correct_images(tmp_path):
    from patchbench.bench.config import build_attack
    from patchbench.bench.heldout import repeat
    from patchbench.data import load_dataset
    from patchbench._validation import make_generator
    from patchbench.patches import Threat

    exp = C.load(_uni(tmp_path, train='{ split = "test", offset = 6, n = 10 }'))
    s = run_experiment(exp, tmp_path / "run", log=lambda *a: None)
    assert (s.done, s.failed) == (1, 0)
    m = _records(tmp_path / "run")[0].metrics
    model = _model()
    x, y = load_dataset(UNLABELLED, "test", n=6)
    xt, yt = load_dataset(UNLABELLED, "test", n=10, offset=6)
    with torch.no_grad():
        pred, pred_t = model(x).argmax(1), model(xt).argmax(1)
    assert m["reference_by_prediction"] == int((y == -1).sum()) == 2
    assert m["reference_by_label"] == 4 and m["photos"] == 6 and m["placements"] == 3
    ref = torch.where(y == -1, pred, y)
    ref_t = torch.where(yt == -1, pred_t, yt)
    # by hand: fit on the 10 held-apart images only, paste on 3 placements of the 6 scored ones
    cfg = expand(exp)[0].config
    atk = build_attack("universal-patch", cfg["attack_options"])
    threat = Threat(area=0.1, shape="circle")
    g = make_generator(0)
    patch = atk.fit(model, (xt, ref_t), threat, generator=g)
    res = atk.apply(model, repeat(x, 3), repeat(ref, 3), threat, patch, generator=g)
    with torch.no_grad():
        adv = model(res.x_adv).argmax(1)
    correct = repeat(pred == ref, 3)
    assert m["n"] == 18 and m["asr_n"] == int(correct.sum())
    assert m["asr"] == pytest.approx(float((correct & (adv != repeat(ref, 3))).sum()) / m["asr_n"])
    assert m["robust_acc_correct"] == pytest.approx(1 - m["asr"])
    assert m["clean_acc"] == pytest.approx(float((pred == ref).float().mean()))
    assert m["train_n"] == 10 and m["train_offset"] == 6 and 0 <= m["train_asr"] <= 1


@needs_fmnist
def test_success_by_iteration_equals_shorter_runs_from_the_same_start(tmp_path):
    import patchbench as pb
    from patchbench.data import load_dataset
    from patchbench.patches import Threat

    text = HEAD + """
[grid]
models = ["fmnist_cnn_small"]
datasets = [{ name = "DATA", split = "test", n = 12 }]
attacks = [{ name = "masked-pgd", steps = 6, step = 0.1, random_start = false }]
threats = [{ area = 0.1 }]
""".replace("DATA", UNLABELLED)
    f = tmp_path / "pgd.toml"
    f.write_text(text)
    run_experiment(C.load(f), tmp_path / "run", log=lambda *a: None)
    m = _records(tmp_path / "run")[0].metrics
    curve = m["asr_by_step"]
    assert len(curve) == 7 and curve == sorted(curve) and curve[-1] == pytest.approx(m["asr"])
    assert m["reference_by_prediction"] == 4
    model = _model()
    x, y = load_dataset(UNLABELLED, "test", n=12)
    with torch.no_grad():
        y = torch.where(y == -1, model(x).argmax(1), y)
    for t in (1, 3):
        ev = pb.evaluate(model, x, y, pb.attacks.get("masked-pgd", steps=t, step=0.1,
                                                      random_start=False), threat=Threat(area=0.1),
                         generator=0)
        assert curve[t] == pytest.approx(ev.asr.value)
    # chunks: same curve length, still the run's own success at the end
    f.write_text(text.replace("threads = 1", "threads = 1\nattack_batch = 5"))
    run_experiment(C.load(f), tmp_path / "run5", log=lambda *a: None)
    m5 = _records(tmp_path / "run5")[0].metrics
    assert len(m5["asr_by_step"]) == 7 and m5["asr_by_step"][-1] == pytest.approx(m5["asr"])


@needs_fmnist
def test_attack_only_report_has_the_success_table_and_plots(tmp_path):
    from patchbench.bench.pages import build_report
    text = HEAD + """
[[grid]]
models = ["fmnist_cnn_small"]
datasets = [{ name = "DATA", split = "test", n = 6 }]
attacks = [{ name = "masked-pgd", steps = 3 }]
threats = [{ area = 0.05 }, { area = 0.1 }]

[[grid]]
models = ["fmnist_cnn_small"]
datasets = [{ name = "DATA", split = "test", n = 4, train = { split = "train", n = 8 }, placements = 2 }]
attacks = [ATTACK]
threats = [{ area = 0.1, shape = "circle" }]
""".replace("DATA", UNLABELLED).replace("ATTACK", GOOD_ATTACK)
    f = tmp_path / "r.toml"
    f.write_text(text)
    run_experiment(C.load(f), tmp_path / "run", log=lambda *a: None)
    html = build_report([tmp_path / "run"]).read_text()
    assert "Attack success over the photos the model classifies correctly" in html
    assert "held-out" in html and "× 2 placements" in html and "by the model's prediction" in html
    assert "vs patch area" in html and "vs masked-PGD iterations" in html
    assert "<table class='paper'>" in html and "Benign and robust accuracy" not in html
    from patchbench.bench.browser import assert_renders, find_chromium
    if find_chromium() is not None:       # the page as a browser shows it: no errors, both plots
        assert_renders(tmp_path / "run" / "index.html", min_tables=1, min_plots=2)


# ---- the bundled demo -------------------------------------------------------------------------------
def test_demo_experiment_is_the_bundled_file_at_the_issue_sizes():
    from patchbench.demo import demo_experiment
    from patchbench.bench.config import dataset_size
    exp = demo_experiment()
    cells = expand(exp)
    assert {c.key for c in cells} == {c.key for c in expand(C.load("demo"))}
    pgd = [c.config for c in cells if c.config["attack"] == "masked-pgd"]
    uni = [c.config for c in cells if c.config["attack"] == "universal-patch"]
    assert sorted(c["patch_area"] for c in pgd) == [0.02, 0.05]
    assert all(c["n"] >= 32 and c["attack_options"]["steps"] == 100
               and c["attack_options"]["early_stop"] for c in pgd)
    assert uni and all(c["dataset_options"]["placements"] == 3 for c in uni)
    for c in uni:
        held = c["n"] or dataset_size("photos", c["dataset_options"]["split"])
        assert held >= 24 and c["dataset_options"]["train"]["split"] == "train"
    quick = demo_experiment(quick=True, seed=3)
    assert quick.name == "demo-quick" and all(c.seed == 3 for c in expand(quick))


def test_demo_refuses_a_folder_of_another_experiment(tmp_path):
    from patchbench.demo import _prepare_folder, demo_experiment
    with ResultsStore(tmp_path):
        pass
    (tmp_path / "experiment.json").write_text('{"name": "quick"}')
    with pytest.raises(ValueError, match="out_dir.*another experiment"):
        _prepare_folder(tmp_path, demo_experiment(quick=True))
    (tmp_path / "experiment.json").write_text('{"name": "demo"}')
    _prepare_folder(tmp_path, demo_experiment(quick=True))      # an empty demo store: kept
    assert (tmp_path / "results.db").is_file()
