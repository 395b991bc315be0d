"""The ``defenses`` preset (PatchZero Table 1 layout + ELGS λ sweep) in a tiny configuration: it writes the
report and the rows, and a killed/finished run resumes without recomputing any cell."""
import json

import pytest

from patchbench.data.fashion_mnist import fashion_mnist_available
from patchbench.presets.defenses import Plan, parse_plan, table_cells
from patchbench.presets._defenses_cells import Cell, CellStore

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST files missing")

ARGS = ["--quick", "--model", "tiny_cnn", "--n", "6", "--defenses", "gt-mask,lgs,patchcleanser",
        "--threads", "1"]
REQUIRED = {"model", "dataset", "defense", "attack", "adaptive", "patch_area", "n", "clean_acc",
            "robust_acc"}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    import io
    from contextlib import redirect_stdout

    from patchbench.presets.defenses import run
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
    table = [r for r in rows if r["section"] == "table"]
    assert {r["defense"] for r in table} == {"undefended", "gt-mask", "lgs", "patchcleanser"}
    assert {r["attack"] for r in table} == {"none", "masked-pgd", "masked-apgd", "masked-cw"}
    assert all(r["clean_acc"] == r["robust_acc"] for r in table if r["attack"] == "none")
    # every defended robust cell exists for a non-adaptive and an adaptive attacker
    for d in ("gt-mask", "lgs", "patchcleanser"):
        for a in ("masked-pgd", "masked-apgd", "masked-cw"):
            assert {r["adaptive"] for r in table if r["defense"] == d and r["attack"] == a} == {False, True}
    pc = [r for r in table if r["defense"] == "patchcleanser" and r["attack"] == "none"]
    assert 0.0 <= pc[0]["certified_acc"] <= pc[0]["clean_acc"]
    text = html.read_text()
    assert "GT mask" in text and "DO / adaptive" in text and "λ" in text and "<img" in text


def test_gt_mask_row_restores_the_undefended_accuracy_under_the_do_attack(first_run):
    rows = json.loads((first_run[0] / "results.json").read_text())
    get = {(r["defense"], r["attack"], r["adaptive"]): r for r in rows if r["section"] == "table"}
    und = get[("undefended", "none", False)]["clean_acc"]
    # the oracle repaints every patch pixel: no worse than the undefended model under attack
    for a in ("masked-pgd", "masked-apgd", "masked-cw"):
        assert get[("gt-mask", a, False)]["robust_acc"] >= get[("undefended", a, False)]["robust_acc"]
    assert get[("gt-mask", "none", False)]["clean_acc"] == und


def test_lambda_sweep_rows_cover_every_method_and_lambda(first_run):
    rows = json.loads((first_run[0] / "results.json").read_text())
    sweep = [r for r in rows if r["section"] == "lambda-sweep"]
    got = {(r["defense"], r["options"]["smoothing_factor"], r["attack"]) for r in sweep}
    assert got == {(d, lam, a) for d in ("lgs", "slgs", "wlgs") for lam in (1.5, 3.5)
                   for a in ("none", "masked-pgd")}


def test_second_run_resumes_and_computes_no_cell(first_run):
    import io
    from contextlib import redirect_stdout

    from patchbench.presets.defenses import run
    out, _, log = first_run
    lines = (out / "cells.jsonl").read_text().splitlines()
    assert f"cells: {len(lines)} computed, 0 reused" in log
    buf = io.StringIO()
    with redirect_stdout(buf):
        run(out, ARGS)
    assert f"cells: 0 computed, {len(lines)} reused" in buf.getvalue()
    assert (out / "cells.jsonl").read_text().splitlines() == lines


def test_store_ignores_a_torn_last_line(tmp_path):
    store = CellStore(tmp_path / "c.jsonl")
    store.put("a", {"x": 1})
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"key": "b", "row": {')          # a run killed mid-write
    again = CellStore(tmp_path / "c.jsonl")
    assert "a" in again and "b" not in again


def test_cell_key_changes_with_any_setting():
    c = Cell("m", "d", "lgs", "masked-pgd", False, 0.05, 10, 100, 0, {"smoothing_factor": 2.3})
    assert c.key == Cell("m", "d", "lgs", "masked-pgd", False, 0.05, 10, 100, 0,
                         {"smoothing_factor": 2.3}).key
    for other in (Cell("m", "d", "lgs", "masked-pgd", True, 0.05, 10, 100, 0, {"smoothing_factor": 2.3}),
                  Cell("m", "d", "lgs", "masked-pgd", False, 0.1, 10, 100, 0, {"smoothing_factor": 2.3}),
                  Cell("m", "d", "lgs", "masked-pgd", False, 0.05, 10, 100, 0, {"smoothing_factor": 3.5})):
        assert other.key != c.key


def test_full_plan_has_the_table_1_layout_with_smaller_n_only_on_expensive_adaptive_rows():
    plan, _ = parse_plan([])
    assert plan.n >= 1000 and plan.steps == 100 and plan.areas == (0.05, 0.10)
    cheap, adaptive = table_cells(plan, "m", "fashion-mnist", plan.areas, plan.defenses, (28, 28),
                                  (0.286,), {}, plan.n)
    assert {c.defense for c in cheap} == set(Plan().defenses)
    assert all(c.n == 1000 for c in cheap if c.defense != "patchcleanser")
    assert {c.defense for c in adaptive} == set(Plan().defenses) - {"undefended"}
    assert all(c.steps == 100 for c in adaptive if c.defense != "patchcleanser")


def test_bad_flags_are_rejected():
    with pytest.raises(LookupError):
        parse_plan(["--defenses", "nope"])
    with pytest.raises(ValueError):
        parse_plan(["--areas", "0.05,1.5"])
