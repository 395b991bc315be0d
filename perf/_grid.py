"""The grid both harness benchmarks run: 24 small classification cells (Fashion-MNIST, the shipped
``fmnist_cnn_small``, 5 % patches): 4 defenses × (benign, masked PGD DO, masked PGD adaptive) × 2 seeds,
each a fraction of a second to a few seconds on this CPU."""
from pathlib import Path

GRID = """
[experiment]
name = "perf-grid"
threads = THREADS

[grid]
models = ["fmnist_cnn_small"]
datasets = [{ name = "fashion-mnist", split = "test", n = N }]
attacks = ["none", { name = "masked-pgd", steps = STEPS }]
defenses = ["none", "jpeg", { name = "median-filter", k = 3 }, { name = "lgs", window = 5, overlap = 2 }]
threats = [{ area = 0.05 }]
adaptive = [false, true]
seeds = [0, 1, 2, 3]
"""


def write_grid(folder: Path, threads: int, n: int = 500, steps: int = 50) -> Path:
    path = Path(folder) / "perf-grid.toml"
    path.write_text(GRID.replace("THREADS", str(threads)).replace("N", str(n))
                    .replace("STEPS", str(steps)))
    return path
