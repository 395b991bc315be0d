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
    res = json.loads((out / "results.json").read_text())
    assert res["summary"]["n_images"] == 4 and 0.0 <= res["summary"]["success"]["value"] <= 1.0
    assert all(r["reference"]["source"] == "prediction" for r in res["images"])   # no class folders
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


# ---------------------------------------------------------------- issue 12: user errors, checked early
def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("patchbench: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model or running an attack fails the test: errors must come before any work."""
    import patchbench.models

    def boom(*a, **k):
        raise AssertionError("expensive work started before the arguments were checked")
    monkeypatch.setattr(patchbench.models, "load", boom)
    monkeypatch.setattr("patchbench.models.zoo.load", boom)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "a.png")
    return folder


@pytest.mark.parametrize("extra, flag", [
    (["--threads", "-1"], "--threads"), (["--threads", "0"], "--threads"),
    (["--epochs", "x"], "--epochs"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--batch-size", "0"], "--batch-size"), (["--seed", "-1"], "--seed"),
    (["--stickers", "2"], "--stickers"), (["--device", "meta"], "--device"),
    (["--arch", "no_such_net"], "--arch")])
def test_train_classifier_bad_flags_are_one_line_naming_the_flag(tmp_path, capsys, no_work, extra, flag):
    argv = ["train", "classifier", "--arch", "tiny_cnn", "--out", str(tmp_path / "w.pt")] + extra
    assert main(argv) == 2
    assert flag in _one_error_line(capsys)
    assert not (tmp_path / "w.pt").exists()


def test_device_cuda_on_a_cpu_only_torch_is_refused_before_work(images, tmp_path, capsys, no_work):
    import torch
    if torch.cuda.is_available():
        argv_device = "cuda:99"                  # a device this machine does not have
    else:
        argv_device = "cuda"
    assert main(["attack", "--device", argv_device, "--images", str(images),
                 "--out", str(tmp_path / "o")]) == 2
    assert "--device" in _one_error_line(capsys)


def test_out_pointing_at_an_existing_file_is_refused_before_the_attack(images, tmp_path, capsys,
                                                                      no_work):
    f = tmp_path / "taken.txt"
    f.write_text("keep me")
    assert main(["attack", "--images", str(images), "--out", str(f)]) == 2
    assert "--out" in _one_error_line(capsys) and f.read_text() == "keep me"
    assert main(["demo", "--out", str(f)]) == 2
    assert "--out" in _one_error_line(capsys)


@pytest.mark.parametrize("target", ["patchzero", "defensive-patch"])
def test_a_directory_given_as_config_is_a_clear_error(tmp_path, capsys, target):
    assert main(["train", target, "--config", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert "--config" in line and "directory" in line


def test_config_file_errors_are_one_line_naming_file_and_field(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text('lr = "x"\n')
    assert main(["train", "defensive-patch", "--config", str(f), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert "c.toml" in line and "lr: expected a number, got 'x'" in line
    f.write_text("lr = [1,\n")
    assert main(["train", "patchzero", "--config", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "c.toml: TOML syntax error" in _one_error_line(capsys)


def test_steps_maps_to_the_attacks_own_iteration_parameter():
    from patchbench.attack_cli import build_attack
    assert build_attack("universal-patch", 2).epochs == 2          # was: unexpected keyword 'steps'
    assert build_attack("masked-pgd", 3).steps == 3
    assert build_attack("lavan", 4).steps == 4
    assert build_attack("masked-cw").steps == 100                 # no --steps: the default


@pytest.mark.parametrize("extra, flag", [
    (["--attack", "nope"], "--attack"), (["--shape", "triangle"], "--shape"),
    (["--model", "no_such_net"], "--model"), (["--area", "0"], "--area"), (["--area", "x"], "--area"),
    (["--area", "nan"], "--area"), (["--steps", "0"], "--steps"), (["--steps", "2.5"], "--steps"),
    (["--target", "-1"], "--target"), (["--seed", "x"], "--seed")])
def test_attack_bad_flags_fail_before_the_model_is_loaded(images, tmp_path, capsys, no_work, extra,
                                                          flag):
    assert main(["attack", "--images", str(images), "--out", str(tmp_path / "o")] + extra) == 2
    assert flag in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_an_images_folder_without_images_is_named(tmp_path, capsys, no_work, kind):
    folder = tmp_path / "imgs"
    if kind == "empty":
        folder.mkdir()
    assert main(["attack", "--images", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "--images" in _one_error_line(capsys)


@pytest.mark.parametrize("argv, flag", [
    (["evaluate", "--preset", "defenses", "--threads", "-1"], "--threads"),
    (["evaluate", "--preset", "defenses", "--areas", "x"], "--areas"),
    (["evaluate", "--preset", "defenses", "--model", "no_such_net"], "--model"),
    (["evaluate", "--preset", "face-patch", "--lr", "nan"], "--lr"),
    (["evaluate", "--preset", "defensive-patch", "--n-test", "0"], "--n-test"),
    (["evaluate", "--preset", "nope"], "--preset"),
    (["train", "nope"], "TARGET")])
def test_preset_and_target_errors_are_one_line(tmp_path, capsys, no_work, argv, flag):
    assert main(argv + (["--out", str(tmp_path / "o")] if argv[0] == "evaluate" else [])) == 2
    assert flag in _one_error_line(capsys)
