"""PatchZero (Xu et al., WACV 2023): detector, zeroing defense, BPDA gradients, two-stage training."""
import pytest
import torch

from patchbench.defenses.base import Defended
from patchbench.defenses.patchzero import PatchZero, dilate
from patchbench.models.unet import UNet


class _BoxDetector(torch.nn.Module):
    """Logits +5 inside a fixed box and −5 outside, plus a tiny dependence on x (for gradients)."""

    channels, input_size = 1, (28, 28)

    def __init__(self, box=(slice(5, 9), slice(10, 14))):
        super().__init__()
        self.box = box

    def forward(self, x):
        logits = torch.full_like(x[:, :1], -5.0)
        logits[..., self.box[0], self.box[1]] = 5.0
        return logits + 0.01 * x[:, :1]


def _tiny_unet(**kw):
    torch.manual_seed(0)
    return UNet(1, base=4, input_size=(28, 28), **kw).eval()


def test_zeroing_fills_exactly_the_dilated_detected_pixels_with_the_mean():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    pz = PatchZero(_BoxDetector(), dilation=1, fill=0.286)
    out, m = pz(x), pz.predict_mask(x)
    expected = torch.zeros(1, 1, 28, 28)
    expected[..., 4:10, 9:15] = 1     # the 4×4 box grown by one pixel on each side (Eq. 3 + dilation)
    assert torch.equal(m, expected.expand(3, 1, 28, 28))
    assert torch.equal(out[m == 1], torch.full_like(out[m == 1], 0.286))
    assert torch.equal(out[m == 0], x[m == 0])      # bit-identical outside the mask


def test_per_channel_fill_and_no_dilation():
    x = torch.rand(2, 3, 28, 28)
    det = _BoxDetector()
    det.channels = 3
    pz = PatchZero(det, dilation=0, fill=(0.1, 0.2, 0.3))
    out = pz(x)
    assert torch.allclose(out[:, :, 5:9, 10:14].mean((0, 2, 3)), torch.tensor([0.1, 0.2, 0.3]))
    assert int(pz.predict_mask(x).sum()) == 2 * 16


def test_dilation_is_a_square_max_filter():
    m = torch.zeros(1, 1, 7, 7)
    m[..., 3, 3] = 1
    assert int(dilate(m, 2).sum()) == 25 and int(dilate(m, 0).sum()) == 1


@pytest.mark.parametrize("mode", ["bpda-sigmoid", "bpda-straight-through", "bpda-identity"])
def test_bpda_passes_nonzero_gradient_to_the_input(mode):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    from patchbench.models.base import ImageClassifier
    clf = ImageClassifier(model, (0.5,), (0.5,), None, [str(i) for i in range(10)], channels=1)
    pz = PatchZero(_tiny_unet(), gradient=mode)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    loss = Defended(clf, pz)(x).logsumexp(1).sum()
    grad, = torch.autograd.grad(loss, x)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()


def test_sigmoid_bpda_gradient_reaches_the_detector_where_exact_gives_none():
    """§3.3: the step function has zero derivative; the sigmoid surrogate lets the attacker's
    gradient flow into the detector's parameters."""
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    grads = {}
    for mode in ("exact", "bpda-sigmoid"):
        det = _tiny_unet()
        pz = PatchZero(det, gradient=mode, fill=0.0)
        pz(x).sum().backward()
        grads[mode] = sum(float(p.grad.abs().sum()) for p in det.parameters() if p.grad is not None)
    assert grads["exact"] == 0.0 and grads["bpda-sigmoid"] > 0


def test_save_load_roundtrip_and_wrong_size_or_channels_error(tmp_path):
    pz = PatchZero(_tiny_unet(), dilation=2, fill=0.3)
    path = pz.save(tmp_path / "pz.pt", note="test")
    back = PatchZero.load(path)
    x = torch.rand(2, 1, 28, 28)
    assert back.dilation == 2 and torch.equal(back(x), pz(x))
    with pytest.raises(ValueError, match="28×28"):
        PatchZero.load(path, input_size=(32, 32))
    with pytest.raises(ValueError, match="1-channel"):
        PatchZero.load(path, channels=3)
    with pytest.raises(ValueError, match="trained on 28×28"):
        back(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="1-channel"):
        back(torch.rand(1, 3, 28, 28))
    torch.save({"x": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a PatchZero checkpoint"):
        PatchZero.load(tmp_path / "bad.pt")


def test_bad_arguments_are_rejected():
    with pytest.raises(LookupError, match="gradient"):
        PatchZero(_tiny_unet(), gradient="bpda-magic")
    with pytest.raises(ValueError, match="dilation"):
        PatchZero(_tiny_unet(), dilation=-1)
    with pytest.raises(ValueError, match="fill"):
        PatchZero(_tiny_unet(), fill=(0.1, 0.2))
    with pytest.raises(TypeError, match="PatchZero.load"):
        PatchZero("some/path.pt")


def test_unet_and_segmenter_shapes():
    from patchbench.models.segmenter import MobileNetV2Segmenter
    u = UNet(3, base=4, depth=3)
    main, aux = u.forward_with_aux(torch.rand(2, 3, 45, 50))
    assert main.shape == (2, 1, 45, 50) and [a.shape for a in aux] == [(2, 1, 45, 50)] * 2
    s = MobileNetV2Segmenter(pretrained=False, decoder_channels=8)
    assert s(torch.rand(1, 3, 64, 80)).shape == (1, 1, 64, 80)
    main, aux = s.forward_with_aux(torch.rand(1, 3, 50, 70))
    assert main.shape == (1, 1, 50, 70) and [a.shape for a in aux] == [(1, 1, 50, 70)] * 2
    full = MobileNetV2Segmenter(pretrained=False, decoder_channels=8, input_scale=1.0,
                                encoder_stride=32, output_stride=2)
    assert full(torch.rand(1, 3, 64, 80)).shape == (1, 1, 64, 80)
    # the light default stops the encoder at stride 16: fewer parameters than the full-size one
    assert sum(p.numel() for p in s.parameters()) < sum(p.numel() for p in full.parameters()) / 2


def test_segmenter_bad_knobs_and_legacy_config():
    from patchbench.models.segmenter import MobileNetV2Segmenter
    with pytest.raises(ValueError, match="input_scale"):
        MobileNetV2Segmenter(pretrained=False, input_scale=0)
    with pytest.raises(ValueError, match="encoder_stride"):
        MobileNetV2Segmenter(pretrained=False, encoder_stride=64)
    with pytest.raises(ValueError, match="output_stride"):
        MobileNetV2Segmenter(pretrained=False, encoder_stride=8, output_stride=8)
    # a config saved before the cost knobs existed rebuilds the full-size network it described
    legacy = dict(pretrained=True, decoder_channels=8, input_size=[64, 64])
    old = MobileNetV2Segmenter.from_config(legacy)
    assert (old.input_scale, old.encoder_stride, len(old.skips)) == (1.0, 32, 5)
    again = MobileNetV2Segmenter.from_config(old.config)
    assert again.config == old.config


# ---------------------------------------------------------------- two-stage training (§3.3)
from patchbench.training import patchzero as tpz  # noqa: E402


def _cfg(**kw):
    base = dict(classifier="tiny_cnn", classifier_kwargs=dict(channels=1), n_train=8, batch_size=8,
                epochs_stage1=2, epochs_stage2=1, attack_steps=3, adaptive_steps=2, unet_base=4,
                area_min=0.04, area_max=0.10, progress=False, seed=1)
    base.update(kw)
    return tpz.PatchZeroTrainConfig(**base)


def test_two_stage_training_improves_pixel_f1_over_the_untrained_detector(tmp_path):
    from patchbench.metrics.segmentation import pixel_scores
    cfg = _cfg(n_train=16, epochs_stage1=8, epochs_stage2=2, lr=1e-2, attacks=("masked-pgd",),
               pos_weight=5.0)
    path = tpz.train_patchzero(cfg, tmp_path)
    cache = torch.load(tmp_path / "stage1_attacks.pt", weights_only=True)
    x_adv, mask = cache["x_adv"].float() / 255, cache["mask"].float()
    trained = PatchZero.load(path)
    untrained = PatchZero(tpz._new_detector(cfg, 1, (28, 28)).eval(), dilation=cfg.dilation)
    f1_before = pixel_scores(untrained.predict_mask(x_adv), mask)["f1"]
    f1_after = pixel_scores(trained.predict_mask(x_adv), mask)["f1"]
    assert f1_after > f1_before + 0.1, (f1_before, f1_after)
    history = torch.load(path, weights_only=True)["meta"]["history"]
    assert [(h["stage"], h["epoch"]) for h in history] == [(1, e) for e in range(1, 9)] + [(2, 1), (2, 2)]
    assert (tmp_path / "patchzero_stage1.pt").is_file()


def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = _cfg()
    ref = torch.load(tpz.train_patchzero(cfg, tmp_path / "a"), weights_only=True)

    real_epoch, calls = tpz._epoch, []

    def crashing(stage, epoch, *a, **k):
        if (stage, epoch) == (1, 1):
            raise KeyboardInterrupt
        calls.append((stage, epoch))
        return real_epoch(stage, epoch, *a, **k)

    monkeypatch.setattr(tpz, "_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        tpz.train_patchzero(cfg, tmp_path / "b")
    state = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    assert (state["stage"], state["epoch"]) == (1, 1)
    cache_time = (tmp_path / "b" / "stage1_attacks.pt").stat().st_mtime_ns

    def recording(stage, epoch, *a, **k):
        calls.append((stage, epoch))
        return real_epoch(stage, epoch, *a, **k)

    monkeypatch.setattr(tpz, "_epoch", recording)
    out = torch.load(tpz.train_patchzero(cfg, tmp_path / "b"), weights_only=True)
    assert calls == [(1, 0), (1, 1), (2, 0)]          # epoch (1, 0) is not redone
    assert (tmp_path / "b" / "stage1_attacks.pt").stat().st_mtime_ns == cache_time
    for k, v in ref["state_dict"].items():
        assert torch.allclose(v.float(), out["state_dict"][k].float(), atol=1e-6), k
    with pytest.raises(ValueError, match="different config"):
        tpz.train_patchzero(_cfg(lr=0.5), tmp_path / "b")


def test_config_from_toml_and_bad_values(tmp_path):
    f = tmp_path / "pz.toml"
    f.write_text('[patchzero]\nn_train = 12\nattacks = ["masked-pgd"]\narea_max = 0.08\n')
    cfg = tpz.PatchZeroTrainConfig.from_toml(f)
    assert cfg.n_train == 12 and cfg.attacks == ("masked-pgd",) and cfg.area_max == 0.08
    f.write_text("n_trian = 3\n")
    with pytest.raises(ValueError, match="unknown PatchZero config keys"):
        tpz.PatchZeroTrainConfig.from_toml(f)
    with pytest.raises(ValueError, match="attacks"):
        tpz.PatchZeroTrainConfig(attacks=("fgsm",))
    with pytest.raises(ValueError, match="area_min"):
        tpz.PatchZeroTrainConfig(area_min=0.2, area_max=0.1)
    with pytest.raises(ValueError, match="unet_depth"):
        tpz.PatchZeroTrainConfig(unet_depth=0)
    deep = tpz._new_detector(tpz.PatchZeroTrainConfig(unet_base=4, unet_depth=3), 1, (28, 28))
    assert deep.config["depth"] == 3 and deep(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_learning_rate_schedule():
    c = tpz.PatchZeroTrainConfig(lr=1e-3, lr_stage2=1e-4, lr_schedule="cosine")
    lrs = [tpz.epoch_lr(c, 1, e, 5) for e in range(5)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(5e-5)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))                   # decreasing
    assert tpz.epoch_lr(c, 2, 0, 2) == pytest.approx(1e-4)           # stage 2 has its own rate
    flat = tpz.PatchZeroTrainConfig(lr=1e-3)
    assert {tpz.epoch_lr(flat, s, e, 4) for s in (1, 2) for e in range(4)} == {1e-3}
    with pytest.raises(ValueError, match="lr_schedule"):
        tpz.PatchZeroTrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="lr_stage2"):
        tpz.PatchZeroTrainConfig(lr_stage2=0)


def test_imagenet_folder_path_runs_one_step_with_the_mobilenet_segmenter(tmp_path):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        arr = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(tmp_path / f"img{i}.png")
    cfg = _cfg(dataset=str(tmp_path), classifier_kwargs=dict(channels=3), image_size=32, n_train=2,
               batch_size=2, epochs_stage1=1, epochs_stage2=1, attack_steps=1, adaptive_steps=1)
    defense = PatchZero.load(tpz.train_patchzero(cfg, tmp_path / "run"))
    assert type(defense.detector).__name__ == "MobileNetV2Segmenter"
    assert defense.input_size == (32, 32) and defense.channels == 3
    assert defense(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)
