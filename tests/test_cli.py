"""The ``patchbench`` command: sub-commands parse, bad input fails with a message and exit code 2,
and ``patchbench attack`` runs end to end on a folder of images."""
import json

import numpy as np
import pytest
from PIL import Image

from patchbench.cli import main


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "attack", "train", "evaluate"):
        assert cmd in out


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    code = main(["attack", "--model", "no_such_net", "--images", str(tmp_path),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no_such_net" in capsys.readouterr().err


def test_bad_area_is_rejected_before_any_work(tmp_path, capsys):
    code = main(["attack", "--area", "1.5", "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "area" in capsys.readouterr().err


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["evaluate", "--preset", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_attack_command_writes_report_and_adversarial_images(tmp_path):
    from patchbench.data.fashion_mnist import fashion_mnist_available, load_fashion_mnist

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    x, _ = load_fashion_mnist("test")
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(4):
        Image.fromarray((x[i, 0].numpy() * 255).astype(np.uint8)).save(src / f"{i}.png")
    out = tmp_path / "run"
    code = main(["attack", "--model", "fmnist_cnn_small", "--attack", "masked-pgd", "--area", "0.1",
                 "--steps", "5", "--images", str(src), "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())
    assert rows[0]["n"] == 4 and 0.0 <= rows[0]["success_rate"] <= 1.0
    assert (out / "index.html").read_text().startswith("<!doctype html>")
    assert len(list((out / "adversarial").glob("*.png"))) == 4


@pytest.mark.parametrize("argv, flag", [(["train", "classifier", "--help"], "--arch"),
                                        (["evaluate", "--preset", "defenses", "--help"], "--steps")])
def test_help_of_a_training_target_or_preset_is_its_own(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert flag in capsys.readouterr().out


def test_train_without_a_target_prints_the_targets_and_fails(capsys):
    assert main(["train"]) == 2
    assert "patchzero" in capsys.readouterr().out
