"""The docs in the repository stay true to it (issue 16, Deliver 6).

* every relative link in README.md and docs/**/*.md points to a file inside the repository (and an
  ``#anchor`` to a heading of that file); nothing links to the project's private ``shared/`` folder;
* every ``patchbench.xxx`` / ``pb.xxx`` dotted name the pages mention resolves by import / getattr;
* the worked examples of docs/architecture.md ("How to add things") run as written, in a fresh
  process (they register names, which must not leak into the other tests' registries), and its
  experiment file validates.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`]+`", re.S)
DOTTED = re.compile(r"(?<![\w/.-])(patchbench|pb)((?:\.[A-Za-z_]\w*)+)")
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces → ``-``."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(page: Path) -> set:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", page.read_text(), re.M)}


def _links(page: Path):
    text = CODE.sub("", page.read_text())          # links inside code are examples, not links
    return [m.group(1) for m in LINK.finditer(text)]


def test_the_pages_exist():
    names = {_rel(p) for p in PAGES}
    for need in ("docs/index.md", "docs/architecture.md", "docs/experiments.md",
                 "docs/papers/patchzero.md", "docs/papers/enhanced-lgs.md",
                 "docs/papers/defensive-patches.md", "docs/papers/face-patches.md",
                 "docs/papers/pair.md"):
        assert need in names


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve_inside_the_repository(page):
    bad = []
    for target in _links(page):
        if re.match(r"[a-z]+:", target):            # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{target} (outside the repository)")
        elif not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not bad, f"{_rel(page)}: broken links: {bad}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_page_refers_to_the_private_shared_folder(page):
    text = page.read_text()
    assert "../shared" not in text and "shared/papers" not in text, _rel(page)


#: run in a fresh interpreter: ``pb.x.y`` names first, by attribute access only, as a user writes
#: them (an unexported ``pb.models.wrap`` fails even where the submodule file exists); then the
#: ``patchbench.x.y`` names, importing the longest module prefix and getattr-ing the rest.
_RESOLVER = """
import importlib, json, sys
import patchbench as pb
bad = {}
names = json.loads(sys.argv[1])
for name in [n for n in names if n.startswith("pb.")]:
    obj = pb
    try:
        for attr in name.split(".")[1:]:
            obj = getattr(obj, attr)
    except Exception as e:
        bad[name] = f"{type(e).__name__}: {e}"
for name in [n for n in names if n.startswith("patchbench.")]:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except Exception as e:
            bad[name] = f"{type(e).__name__}: {e}"
        break
    else:
        bad[name] = "no module"
print(json.dumps(bad))
"""


def _dotted_names():
    out = {}
    for page in PAGES:
        for code in CODE.findall(page.read_text()):
            for m in DOTTED.finditer(code):
                out.setdefault(m.group(1) + m.group(2), set()).add(_rel(page))
    return out


def test_the_pages_mention_names():
    names = _dotted_names()
    assert sum(n.startswith("pb.") for n in names) > 10      # the check below is not vacuous
    assert sum(n.startswith("patchbench.") for n in names) > 30


def test_every_dotted_name_in_the_docs_resolves():
    import json
    names = _dotted_names()
    run = subprocess.run([sys.executable, "-c", _RESOLVER, json.dumps(sorted(names))],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    bad = json.loads(run.stdout.strip().splitlines()[-1])
    assert not bad, "names in the docs that do not resolve: " + "; ".join(
        f"{n} (in {', '.join(sorted(names[n]))}): {why}" for n, why in sorted(bad.items()))


def _architecture_blocks():
    text = (ROOT / "docs" / "architecture.md").read_text()
    blocks = FENCE.findall(text)
    python = [code for lang, code in blocks if lang == "python"
              and "runner.run_experiment" not in code]
    toml = [code for lang, code in blocks if lang == "toml"]
    return python, toml


def test_the_worked_examples_run(tmp_path):
    python, toml = _architecture_blocks()
    assert len(python) >= 5 and len(toml) == 1     # attack, defense, task, dataset, model
    from PIL import Image
    for cls in ("cat", "dog"):                     # the dataset example's photos/ folder
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40 + 10 * i, 30), (60 * i, 120, 200)).save(
                tmp_path / "photos" / cls / f"{i}.png")
    (tmp_path / "my-experiment.toml").write_text(toml[0])
    # the attack and the defense examples are the code the experiment's `imports` names
    (tmp_path / "my_extensions.py").write_text("\n\n".join(
        code for code in python if '@register("random-noise-patch")' in code
        or '@register("box-blur")' in code))
    script = "\n\n".join(python) + textwrap.dedent("""

        from patchbench.bench import config
        exp = config.load("my-experiment.toml")
        print("EXPERIMENT", exp.name)
    """)
    (tmp_path / "examples.py").write_text(script)
    run = subprocess.run([sys.executable, "examples.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1",
                              "PATCHBENCH_HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "EXPERIMENT my-experiment" in run.stdout
    # the command line knows the user's names through [experiment] imports
    dry = subprocess.run([sys.executable, "-c", "import sys; from patchbench.cli import main; "
                          "sys.exit(main(sys.argv[1:]))", "run", "my-experiment.toml",
                          "--out", "runs/mine", "--dry-run"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1",
                              "PATCHBENCH_HOME": str(tmp_path / "home")})
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "random-noise-patch" in dry.stdout and "box-blur" in dry.stdout
