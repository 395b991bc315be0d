"""``patchbench evaluate --preset defenses``: the bundled ``defenses`` experiment (PatchZero Table 1
layout + ELGS λ sweep) run through the harness, in a tiny configuration: it writes the report and
the rows, and a second run resumes without recomputing any cell."""
import io
import json
from contextlib import redirect_stdout

import pytest

from patchbench.bench import config as C
from patchbench.bench.grid import expand
from patchbench.data.fashion_mnist import fashion_mnist_available
from patchbench.bench.aliases import defenses_experiment as experiment
from patchbench.bench.aliases import parse_defenses as parse_plan
from patchbench.bench.aliases import run_preset


def run(out, argv):
    return run_preset("defenses", out, argv)

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST files missing")

ARGS = ["--quick", "--model", "tiny_cnn", "--n", "6", "--defenses", "gt-mask,lgs,patchcleanser",
        "--threads", "1"]
REQUIRED = {"model", "dataset", "defense", "attack", "adaptive", "patch_area", "n", "clean_acc",
            "robust_acc"}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("defenses")
    buf = io.StringIO()
    with redirect_stdout(buf):
        html = run(out, ARGS)
    return out, html, buf.getvalue()


def test_quick_run_writes_report_and_rows_with_the_required_keys(first_run):
    out, html, log = first_run
    assert html == out / "index.html" and html.is_file() and (out / "results.csv").is_file()
    rows = json.loads((out / "results.json").read_text())
    assert rows and all(REQUIRED <= set(r) for r in rows)
    table = [r for r in rows if r["defense"] != "wlgs" and r["defense"] != "slgs"]
    assert {r["defense"] for r in table} == {"none", "gt-mask", "lgs", "patchcleanser"}
    assert {r["attack"] for r in table} == {"none", "masked-pgd", "masked-apgd", "masked-cw"}
    assert all(r["clean_acc"] == r["robust_acc"] for r in table if r["attack"] == "none")
    # every defended robust cell exists for a non-adaptive and an adaptive attacker
    for d in ("gt-mask", "lgs", "patchcleanser"):
        for a in ("masked-pgd", "masked-apgd", "masked-cw"):
            assert {r["adaptive"] for r in table if r["defense"] == d and r["attack"] == a} == {False, True}
    pc = [r for r in table if r["defense"] == "patchcleanser" and r["attack"] == "none"]
    assert len(pc) == 1 and 0.0 <= pc[0]["certified_acc"] <= pc[0]["clean_acc"]
    text = html.read_text()
    assert "GT mask" in text and "DO / adaptive" in text and "λ" in text and "<img" in text
    assert "Certified" in text
    assert log.strip().splitlines()[-1] == f"cells total={len(rows)} done={len(rows)} failed=0 " \
                                           f"ran={len(rows)}"


def test_gt_mask_row_restores_the_undefended_accuracy_under_the_do_attack(first_run):
    rows = json.loads((first_run[0] / "results.json").read_text())
    get = {(r["defense"], r["attack"], r["adaptive"]): r for r in rows
           if r["defense"] in ("none", "gt-mask")}
    und = get[("none", "none", False)]["clean_acc"]
    # the oracle repaints every patch pixel: no worse than the undefended model under attack
    for a in ("masked-pgd", "masked-apgd", "masked-cw"):
        assert get[("gt-mask", a, False)]["robust_acc"] >= get[("none", a, False)]["robust_acc"]
    assert get[("gt-mask", "none", False)]["clean_acc"] == und


def test_lambda_sweep_cells_cover_every_method_and_lambda(first_run):
    cells = expand(experiment(ARGS))
    got = {(c.config["defense"], c.config["defense_options"]["smoothing_factor"], c.config["attack"])
           for c in cells if c.config["defense"] in ("lgs", "slgs", "wlgs")
           and c.config["attack"] in ("none", "masked-pgd") and not c.config["adaptive"]}
    assert got == {(d, lam, a) for d in ("lgs", "slgs", "wlgs") for lam in (1.5, 3.5)
                   for a in ("none", "masked-pgd")} | {("lgs", 2.3, "none"),
                                                       ("lgs", 2.3, "masked-pgd")}
    assert "ELGS λ sweep" in (first_run[0] / "index.html").read_text()


def test_second_run_resumes_and_computes_no_cell(first_run):
    out, _, log = first_run
    total = len(json.loads((out / "results.json").read_text()))
    buf = io.StringIO()
    with redirect_stdout(buf):
        run(out, ARGS)
    assert buf.getvalue().strip().splitlines()[-1] == \
        f"cells total={total} done={total} failed=0 ran=0"


def test_full_experiment_has_the_table_1_layout_with_smaller_n_only_on_expensive_rows():
    exp = C.load("defenses")
    assert experiment([]).grids == exp.grids            # no flags: the file as it is
    cells = [c.config for c in expand(exp) if c.config["dataset"] == "fashion-mnist"]
    rows = {c["labels"]["defense"] for c in cells}
    assert rows == {"none", "gt-mask", "jpeg", "median-filter", "lgs", "slgs", "wlgs",
                    "patchcleanser", "patchzero-do", "patchzero-two-stage", "sac"}
    assert {c["patch_area"] for c in cells} == {0.05, 0.10}
    benign_do = [c for c in cells if not c["adaptive"]]
    assert all(c["n"] == 1000 for c in benign_do if c["defense"] != "patchcleanser")
    assert all(c["n"] == 300 for c in benign_do if c["defense"] == "patchcleanser")
    assert all(c["dataset_options"]["n"] == 1000 for c in cells)       # one pool: 1000 images
    adaptive = [c for c in cells if c["adaptive"]]
    assert {c["labels"]["defense"] for c in adaptive} == rows - {"none"}
    assert all(c["attack_options"]["steps"] == 100 for c in adaptive if c["defense"] != "patchcleanser")
    assert all(c["n"] < 1000 for c in adaptive)


def test_bad_flags_are_rejected():
    with pytest.raises(LookupError):
        parse_plan(["--defenses", "nope"])
    with pytest.raises(ValueError):
        parse_plan(["--areas", "0.05,1.5"])
