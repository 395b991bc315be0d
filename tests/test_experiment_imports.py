"""``[experiment] imports``: user code that registers names, imported by the harness (config checks,
the local executor and every Ray worker: bench/imports.py)."""
from __future__ import annotations

import sys
import textwrap

import pytest

from patchbench.bench import config as C
from patchbench.bench import imports as I
from patchbench.bench.runner import run_experiment
from patchbench.bench.store import ResultsStore

PLUGIN = textwrap.dedent('''
    import torch
    from patchbench.defenses import Defense, register

    @register("NAME")
    class Halve(Defense):
        """Scales every pixel by 0.5 (a test purifier)."""
        gradient = "exact"

        def purify(self, x):
            return x * 0.5
''')

EXP = textwrap.dedent('''
    [experiment]
    name = "plug"
    threads = 1
    imports = IMPORTS

    [grid]
    models = [{ name = "tiny_cnn", options = { channels = 1, num_classes = 10 } }]
    datasets = [{ name = "fashion-mnist", split = "test", n = 6 }]
    attacks = ["none"]
    defenses = ["none", "NAME"]
    threats = [{ area = 0.1 }]
    adaptive = [false]
    seeds = [0]
''')


def _files(tmp_path, name: str, imports: str):
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / f"{name.replace('-', '_')}.py").write_text(
        PLUGIN.replace("NAME", name))
    p = tmp_path / "exp.toml"
    p.write_text(EXP.replace("NAME", name).replace("IMPORTS", imports))
    return p


def test_a_py_file_relative_to_the_experiment_registers_a_defense_the_grid_names(tmp_path):
    path = _files(tmp_path, "halve-a", '["plugins/halve_a.py"]')
    exp = C.load(path)
    assert exp.imports == [str((tmp_path / "plugins" / "halve_a.py").resolve())]
    s = run_experiment(exp, tmp_path / "run", log=lambda *a, **k: None)
    assert s.failed == 0 and s.done == 2
    with ResultsStore(tmp_path / "run", readonly=True) as store:
        recs = store.records()
    assert {r.config["defense"] for r in recs} == {"none", "halve-a"}


def test_a_module_name_on_sys_path_works_and_is_imported_once(tmp_path, monkeypatch):
    path = _files(tmp_path, "halve-b", '["halve_b"]')
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    exp = C.load(path)
    assert exp.imports == ["halve_b"] and "halve_b" in sys.modules
    first = sys.modules["halve_b"]
    I.load_imports(exp.imports)                         # a second import does nothing
    assert sys.modules["halve_b"] is first


def test_the_worker_side_imports_from_the_run_settings(tmp_path):
    """A Ray worker starts without the driver's imports: run_cell loads settings["imports"]."""
    from patchbench.bench.grid import expand
    from patchbench.bench.runner import run_cell
    path = _files(tmp_path, "halve-c", '["plugins/halve_c.py"]')
    exp = C.load(path)
    cell = [c for c in expand(exp) if c.config["defense"] == "halve-c"][0]
    I._LOADED.clear()
    from patchbench.defenses import base as DB
    DB._DEFENSES._classes.pop("halve-c", None)          # as in a fresh worker process
    DB._DEFENSES._names.pop("halve-c", None)
    assert "halve-c" not in DB._DEFENSES.names()
    without = run_cell(cell.config, {"device": "cpu", "artifacts": {}})
    assert without.status == "failed" and "halve-c" in without.error
    rec = run_cell(cell.config, {"device": "cpu", "artifacts": {}, "imports": exp.imports})
    assert rec.status == "done", rec.error


@pytest.mark.parametrize("imports, match", [
    ('"plugins/x.py"', "expected a list"),
    ('["plugins/missing.py"]', r"imports\[0\]: no such file"),
    ('["not a module"]', "neither a module name"),
    ('["no_such_module_zz"]', r"imports\[0\]: importing 'no_such_module_zz' failed: "
                              r"ModuleNotFoundError"),
    ('[""]', "expected a module name"),
])
def test_bad_imports_name_the_entry(tmp_path, imports, match):
    path = _files(tmp_path, "halve-d", imports)
    with pytest.raises((TypeError, ValueError), match=match) as e:
        C.load(path)
    assert "exp.toml" in str(e.value) and "experiment" in str(e.value)


def test_an_import_that_raises_is_reported_with_its_error(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom in user code')\n")
    p = tmp_path / "exp.toml"
    p.write_text(EXP.replace("NAME", "none").replace("IMPORTS", '["broken.py"]')
                 .replace('defenses = ["none", "none"]', 'defenses = ["none"]'))
    with pytest.raises(ValueError, match="RuntimeError: boom in user code"):
        C.load(p)
    assert not any(k.startswith("patchbench_user.broken") for k in sys.modules)
