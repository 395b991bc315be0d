"""The bundled ``defenses`` experiment reproduces the old ``defenses`` preset: the same cells (for the
full plan and for its flags), the same defenses built from them, and the same numbers cell for cell
with the same seeds; ``patchbench evaluate --preset defenses`` is an alias that runs it through the
harness, resumes, and writes the report with the certified column and the λ sweep.

The old preset's side is recorded in ``tests/golden/defenses_preset.json``: its planned cells for each
flag set below, a digest of every defense it built (settings, buffer and weight hashes) and its rows
on :data:`SMALL`, written by the old preset code at commit dcb6e6e (the last one that had
``presets/``) with the script in that file's ``command`` note, before the preset code was removed."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from patchbench.bench import config as C
from patchbench.bench.grid import expand
from patchbench.bench.runner import run_experiment
from patchbench.bench.store import ResultsStore
from patchbench.data.fashion_mnist import fashion_mnist_available
from patchbench.bench.aliases import defenses_experiment as experiment

GOLDEN = json.loads((Path(__file__).parent / "golden" / "defenses_preset.json").read_text())
ASSETS = Path(__file__).resolve().parent.parent / "src" / "patchbench" / "assets"

needs_data = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST files missing")

#: small, but with every kind of cell: DO cells cut from a larger pool (PatchCleanser: 16 of 24),
#: adaptive cells on fewer images, certification, a PatchZero checkpoint and the λ sweep
SMALL = ["--quick", "--n", "24", "--defenses", "gt-mask,jpeg,lgs,slgs,patchcleanser,patchzero-do"]
IMAGENET_N = 8


def _quiet(*a, **k):
    pass


def _row_of(cfg: dict) -> str:
    lab = cfg["labels"]["defense"]
    return "undefended" if cfg["defense"] == "none" else lab


def _new_key(cfg: dict) -> tuple:
    """A harness cell as the old preset's cell identity: (model, dataset, row, attack, adaptive,
    area, n, steps, seed, λ)."""
    n = cfg["n"] if cfg["n"] is not None else IMAGENET_N
    steps = cfg["attack_options"].get("steps", 0)
    return (cfg["model"], cfg["dataset"], _row_of(cfg), cfg["attack"], cfg["adaptive"],
            round(cfg["patch_area"], 12), n, steps, cfg["seed"],
            cfg["defense_options"].get("smoothing_factor"))


def _old_cells(argv) -> tuple:
    """The old preset's planned cells for ``argv``: (number planned, the set of their identities)."""
    rec = GOLDEN["cells"][" ".join(argv)]
    return rec["planned"], {tuple(k) for k in rec["keys"]}


@pytest.mark.parametrize("argv", [[], ["--n", "200", "--steps", "20", "--skip-imagenet"], SMALL,
                                  ["--n", "4", "--areas", "0.02,0.2", "--defenses", "lgs,wlgs",
                                   "--seed", "3"],
                                  ["--quick", "--n", "100", "--model", "tiny_cnn"]])
def test_the_experiment_has_exactly_the_old_presets_cells(argv):
    planned, old_keys = _old_cells(argv)
    cells = expand(experiment(argv))
    new = [c for c in cells if c.config["defense"] != "sac"]       # added after the old preset
    sac = [c for c in cells if c.config["defense"] == "sac"]
    # 2 areas × (benign, 3 DO, 3 adaptive); --defenses and --quick choose rows of the old preset
    assert len(sac) == (0 if {"--defenses", "--quick"} & set(argv) else 2 * 7)
    assert {_new_key(c.config) for c in new} == old_keys
    assert len({_new_key(c.config) for c in new}) == len(new) == len(old_keys)
    if not argv:          # the full preset: 202 planned cells, 6 of them the λ sweep's λ = 2.3 repeats
        assert (planned, len(new)) == (202, 196)


def _state(d):
    """What a built defense computes with: its settings and a hash of each buffer/weight (but the
    classifier it was given, ``model.*``: a random stand-in, another one in the recording run)."""
    if d is None:
        return None
    plain = {k: v for k, v in vars(d).items() if not k.startswith("_") and k != "training"
             and not isinstance(v, (torch.nn.Module, torch.Tensor))}
    tensors = {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
               + f":{tuple(v.shape)}" for k, v in d.state_dict().items() if not k.startswith("model.")}
    return [type(d).__name__, repr(sorted(plain.items())), tensors]


def test_every_cell_builds_the_defense_the_old_preset_built():
    from patchbench.defenses import BuildContext, build

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10))   # never run here
    arts = {"pz_do": str(ASSETS / "patchzero_fmnist_do.pt"),
            "pz_two_stage": str(ASSETS / "patchzero_fmnist_two_stage.pt")}
    seen = set()
    for cell in expand(experiment([])):
        cfg = cell.config
        if cfg["defense"] == "sac":                  # not in the old preset
            continue
        photos = cfg["dataset"] == "imagenet-samples"
        hw, fill = ((224, 224), (0.485, 0.456, 0.406)) if photos else ((28, 28), (0.286,))
        row = _row_of(cfg)
        ident = json.dumps([row, cfg["patch_area"], photos, cfg["defense_options"]], sort_keys=True)
        if ident in seen:
            continue
        seen.add(ident)
        want = GOLDEN["defenses"][ident]
        opts = {k: v for k, v in cfg["defense_options"].items() if k != "certify"}
        ctx = BuildContext(model=model, image_size=hw, channels=len(fill), fill=fill,
                           patch_area=cfg["patch_area"], artifacts=arts)
        got = None if cfg["defense"] == "none" else build(cfg["defense"], ctx, **opts)
        old = want["state"] and [*want["state"][:2], {k: v for k, v in want["state"][2].items()
                                                       if not k.startswith("model.")}]
        assert _state(got) == old, ident
        # PatchCleanser certifies on the 28² images only, as the old preset did
        if row == "patchcleanser":
            assert cfg["defense_options"].get("certify", False) == want["certify"]
        else:
            assert "certify" not in cfg["defense_options"]
    assert seen == set(GOLDEN["defenses"]) and len(seen) > 30


#: PatchCleanser's adaptive cells on 4 images (each attack step double-masks every image): the
#: same change on both sides keeps the test short
PC_ADAPTIVE_N = 4


def _small_experiment():
    exp = experiment(SMALL)
    table = next(g for g in exp.grids if g.name == "fashion-mnist")
    table.overrides.append({"where": {"adaptive": True, "defense": "patchcleanser"},
                            "set": {"n": PC_ADAPTIVE_N}, "path": "test.override"})
    return exp


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The old preset's rows (recorded) and the harness on :data:`SMALL`: ``(old rows, new
    records)``."""
    root = tmp_path_factory.mktemp("parity")
    rows = GOLDEN["rows"]
    run_experiment(_small_experiment(), root / "new", log=_quiet)
    with ResultsStore(root / "new", readonly=True) as s:
        recs = s.records()
    return rows, recs, root


def _old_row_key(r: dict) -> tuple:
    return (r["model"], r["dataset"], r["defense"], r["attack"], r["adaptive"],
            round(r["patch_area"], 12), r["n"], r["steps"], r["seed"],
            r["options"].get("smoothing_factor"))


@needs_data
def test_same_numbers_cell_for_cell_as_the_old_preset(both):
    rows, recs, _ = both
    new = {_new_key(r.config): r for r in recs}
    assert all(r.status == "done" for r in recs)
    assert {_old_row_key(r) for r in rows} == set(new) and len(new) == 58
    for r in rows:
        m = new[_old_row_key(r)].metrics
        got = (m["n"], m["clean_acc"], m["robust_acc"], m["asr"], m["robust_acc_ci"])
        want = (r["n"], r["clean_acc"], r["robust_acc"], r["asr"], r["robust_acc_ci"])
        assert got == want, _old_row_key(r)
        assert m["attacker"] == r["attacker"]
        if r["defense"] == "patchcleanser":
            if r["attack"] == "none":     # the old preset kept float32's mean
                assert m["certified_acc"] == pytest.approx(r["certified_acc"], abs=1e-6)
                assert m["certified_acc_ci"][0] <= m["certified_acc"] <= m["certified_acc_ci"][1]
            else:                         # the old benign value was certify()'s 666 pairs
                assert m["forward_equivalents_last"] == r["forward_equivalents_last"]
    # PatchCleanser's DO cells score 16 images of the attack on all 24 (as the old cache did)
    pc = [r for r in rows if r["defense"] == "patchcleanser" and not r["adaptive"]]
    assert {r["n"] for r in pc} == {16}


@needs_data
def test_the_alias_runs_the_experiment_resumes_and_reports(both, tmp_path, capsys):
    from patchbench.cli import main

    _, recs, root = both
    out = root / "new"
    # a subset of the same flags' rows through the command: every cell is already in the store
    argv = SMALL[:-1] + ["gt-mask,lgs"]
    want = len(expand(experiment(argv)))
    assert main(["evaluate", "--preset", "defenses", "--out", str(out), *argv]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"cells total={want} done={want} failed=0 ran=0" and want == 4 + 2 * 7 + 12
    html = (out / "index.html").read_text()
    assert "Certified" in html and "λ sweep" in html and "patchzero-do" in html
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == want and all({"defense", "attack", "adaptive", "patch_area", "n",
                                           "clean_acc", "robust_acc"} <= set(r) for r in rows)


@pytest.mark.parametrize("argv, flag", [(["--n", "0"], "--n"), (["--areas", "0.05,1.5"], "--areas"),
                                        (["--defenses", "nope"], "--defenses"),
                                        (["--model", "no_such_net"], "--model")])
def test_bad_flags_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises((SystemExit, ValueError, LookupError)) as e:
        experiment(argv)
    text = str(e.value) + capsys.readouterr().err
    assert flag in text


def test_the_bundled_file_dry_run_lists_the_cells_with_a_cost(tmp_path):
    lines = []
    s = run_experiment(C.load("defenses"), tmp_path / "dry", dry_run=True, log=lines.append)
    assert s.total == 196 + 14 and s.ran == 0 and not (tmp_path / "dry" / "results.db").exists()
    assert sum(line.startswith("  to do") for line in lines) == 196 + 14
    assert "estimated cost" in lines[-1]
    # the one shared DO attack of a group is charged once: PatchCleanser's certification dominates
    # its benign cell, and its DO cells cost only their double-masked predictions
    cost = {ln.split("  ")[2]: float(ln.rsplit("~", 1)[1].split()[0].replace(",", ""))
            for ln in lines if ln.startswith("  to do")}
    pc = cost["fmnist_cnn_small 5% patchcleanser benign n=300 seed 0"]
    assert pc > cost["fmnist_cnn_small 5% lgs benign n=1000 seed 0"] * 100


# ---- the report: the certified column, fewer adaptive steps in the attack's column, the λ sweep
def _record(defense, attack="none", adaptive=False, steps=100, n=100, area=0.05, clean=0.9,
            robust=0.5, **options):
    from patchbench._io import config_fingerprint
    from patchbench.bench.store import CellRecord
    cfg = {"schema": 2, "experiment": "defenses", "task": "classification",
           "model": "fmnist_cnn_small", "model_options": {}, "dataset": "fashion-mnist",
           "dataset_options": {"split": "test", "offset": 0, "n": 1000}, "n": n, "attack": attack,
           "attack_options": {} if attack == "none" else {"eps": 1.0, "steps": steps},
           "defense": defense, "defense_options": dict(options), "patch_area": area,
           "threat": {"shape": "square", "placement": "random", "aspect": 1.0},
           "adaptive": adaptive, "seed": 0, "artifacts": {},
           "labels": {"attack": attack, "defense": defense, "model": "fmnist_cnn_small",
                      "dataset": "fashion-mnist"}}
    who = "none" if attack == "none" else ("adaptive (bpda-identity)" if adaptive else "DO")
    met = {"n": n, "clean_acc": clean, "clean_acc_ci": [clean - 0.05, clean + 0.05],
           "robust_acc": clean if attack == "none" else robust,
           "robust_acc_ci": [0.1, 0.9], "asr": 0.2, "asr_ci": [0.1, 0.3], "asr_n": n,
           "attacker": who, "seconds": 1.0}
    if defense == "patchcleanser" and attack == "none":
        met.update(certified_acc=0.25, certified_acc_ci=[0.2, 0.3])
    return CellRecord(config_fingerprint(cfg), cfg, met, started=1.0, finished=2.0, seconds=1.0,
                      seed=0)


def _page(tmp_path, records) -> str:
    import re

    from patchbench.bench.pages import build_report
    with ResultsStore(tmp_path) as s:
        for r in records:
            s.record(r)
    html = build_report(tmp_path).read_text()
    return re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "IMG", html)


def test_report_keeps_fewer_adaptive_steps_in_the_attacks_column_and_shows_certified(tmp_path):
    recs = [_record("none"), _record("none", "masked-pgd"),
            _record("patchcleanser", n=300, k=6, certify=True),
            _record("patchcleanser", "masked-pgd", n=300, k=6, certify=True),
            _record("patchcleanser", "masked-pgd", True, steps=25, n=16, robust=0.25, k=6,
                    certify=True),
            _record("jpeg", quality=75), _record("jpeg", "masked-pgd", quality=75),
            _record("jpeg", "masked-pgd", True, robust=0.4, quality=75)]
    html = _page(tmp_path, recs)
    table = html[html.index("<table class='paper'>"):]
    table = table[:table.index("</table>")]
    assert table.count("MPGD<br><small>DO / adaptive</small>") == 1 and "steps=" not in table
    assert "100 attack steps unless marked" in table
    assert "adaptive n=16, 25 steps" in table and "<b>25.0</b>" in table     # certified column
    assert "<th>Certified</th>" in table
    assert "vs attack steps" not in html          # one steps value per line: no steps plot


def test_report_draws_the_lambda_sweep_and_keeps_the_tables_lambda_in_the_table(tmp_path):
    recs = [_record("none"), _record("none", "masked-pgd")]
    for lam in (1.5, 2.3, 3.5):
        opts = {"window": 5, "overlap": 2, "smoothing_factor": lam}
        recs += [_record("lgs", clean=0.9 - lam / 10, **opts),
                 _record("lgs", "masked-pgd", robust=lam / 10, **opts)]
        if lam != 2.3:
            recs += [_record("wlgs", clean=0.8, **opts), _record("wlgs", "masked-pgd", **opts)]
    recs += [_record("lgs", "masked-pgd", True, robust=0.1, window=5, overlap=2,
                     smoothing_factor=2.3)]
    # two JPEG qualities are two rows, not a sweep
    recs += [_record("jpeg", quality=q) for q in (50, 90)]
    html = _page(tmp_path, recs)
    main = html[html.index("Benign and robust accuracy"):html.index("ELGS λ sweep")]
    assert "smoothing_factor" not in main and ">LGS<" in main and "WLGS" not in main
    assert "JPEG (quality=50)" in main and "JPEG (quality=90)" in main
    sweep = html[html.index("ELGS λ sweep"):]
    sweep = sweep[:sweep.index("</table>")]
    assert "the table above shows λ = 2.3" in sweep
    # LGS at λ = 1.5: benign 75.0, MPGD DO 15.0, their average 45.0; WLGS joins the sweep
    assert "<td>1.5</td><td>75.0</td><td>15.0</td><td>45.0</td>" in sweep
    assert sweep.count("<td class='t'>WLGS</td>") == 2 and "MAPGD" not in sweep
