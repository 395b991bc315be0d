"""Defense contract: Defended is a classifier, BPDA passes gradients, EOT averages draws."""
import pytest
import torch
from torch import nn

from patchbench.defenses import (GRADIENTS, JPEG, LGS, Defended, Defense, GTMaskOracle,
                                 MedianFilter, PatchCleanser, binarize, bpda, get, names)
from patchbench.defenses.compression import jpeg_roundtrip
from patchbench.models.base import ImageClassifier


def tiny_model(channels=3, classes=4, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                        nn.Flatten(), nn.Linear(128, classes))
    return ImageClassifier(net, [0.5] * channels, [0.25] * channels, None,
                           [f"c{i}" for i in range(classes)], channels, "tiny").eval()


def images(n=2, c=3, s=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, s, s, generator=g)


class NoiseDefense(Defense):
    """A randomised toy defense: adds uniform noise drawn from its own generator."""
    randomized = True
    eot_samples = 5

    def __init__(self, seed=0):
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)

    def purify(self, x):
        noise = torch.rand(x.shape, generator=self.gen) * 0.2 - 0.1
        return (x + noise).clamp(0, 1)


def test_defended_is_a_valid_classifier():
    model = tiny_model()
    target = Defended(model, LGS())
    assert (target.num_classes, target.channels, target.input_size) == (4, 3, None)
    assert target.class_names == model.class_names
    x = images()
    logits = target(x)
    assert logits.shape == (2, 4)
    labels, conf = target.predict(x)
    assert torch.equal(labels, model(LGS()(x)).argmax(1))
    assert ((conf > 0) & (conf <= 1)).all()


def test_bpda_identity_through_jpeg_is_the_model_gradient_at_the_jpeg_image():
    model, x = tiny_model(), images()
    x.requires_grad_(True)
    Defended(model, JPEG(quality=50))(x).logsumexp(1).sum().backward()
    xj = jpeg_roundtrip(x.detach(), 50).requires_grad_(True)
    model(xj).logsumexp(1).sum().backward()
    assert x.grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, xj.grad)


def test_differentiable_jpeg_surrogate_gives_a_different_nonzero_gradient():
    model, x = tiny_model(), images()
    grads = []
    for surrogate in ("identity", "differentiable"):
        xi = x.clone().requires_grad_(True)
        Defended(model, JPEG(50, surrogate=surrogate))(xi).logsumexp(1).sum().backward()
        grads.append(xi.grad)
    assert grads[1].abs().sum() > 0
    assert not torch.allclose(grads[0], grads[1])


def test_median_filter_gradient_is_the_exact_subgradient():
    x = images(1, 1, 16).requires_grad_(True)
    MedianFilter(3)(x).sum().backward()
    # each output pixel sends its gradient to exactly one input pixel (the median)
    assert float(x.grad.sum()) == pytest.approx(16 * 16)
    assert torch.equal(x.grad, x.grad.round())
    model = tiny_model(1)
    xi = images(2, 1, 16).requires_grad_(True)
    Defended(model, MedianFilter(3))(xi)[:, 0].sum().backward()
    assert xi.grad.abs().sum() > 0


def test_eot_averages_logits_over_draws_in_attack_mode_only():
    model, x = tiny_model(), images()
    target = Defended(model, NoiseDefense(seed=3), eot_samples=4)
    xr = x.clone().requires_grad_(True)
    out = target(xr)                       # autograd recording → attack mode → 4 draws
    ref = NoiseDefense(seed=3)
    with torch.no_grad():
        manual = torch.stack([model(ref.purify(x)) for _ in range(4)]).mean(0)
    torch.testing.assert_close(out.detach(), manual)
    with torch.no_grad():                  # evaluation: one draw
        single = Defended(model, NoiseDefense(seed=3), eot_samples=4)(x)
        torch.testing.assert_close(single, model(NoiseDefense(seed=3).purify(x)))
    forced = Defended(model, NoiseDefense(seed=3), eot_samples=4)
    forced.attack_mode = True
    with torch.no_grad():
        torch.testing.assert_close(forced(x), manual)
    assert Defended(model, NoiseDefense()).eot_samples == 5   # the defense's default


def test_prediction_level_defense_uses_the_models_gradient_bpda_identity():
    model, x = tiny_model(), images(2, 3, 24)
    pc = PatchCleanser(patch_size=4, image_size=24, k=3)
    target = Defended(model, pc)
    with torch.no_grad():
        torch.testing.assert_close(target(x), pc.classify(model, x))
    xr = x.clone().requires_grad_(True)
    out = target(xr)
    torch.testing.assert_close(out.detach(), pc.classify(model, x))
    out[:, 1].sum().backward()
    xm = x.clone().requires_grad_(True)
    model(xm)[:, 1].sum().backward()
    torch.testing.assert_close(xr.grad, xm.grad)


def test_binarize_backward_modes():
    p = torch.tensor([0.2, 0.5, 0.7], requires_grad=True)
    b = binarize(p, 0.5, "bpda-sigmoid", temperature=0.1)
    assert b.tolist() == [0.0, 1.0, 1.0]
    b.sum().backward()
    s = torch.sigmoid((p.detach() - 0.5) / 0.1)
    torch.testing.assert_close(p.grad, s * (1 - s) / 0.1)
    p.grad = None
    binarize(p, 0.5, "bpda-straight-through").sum().backward()
    assert p.grad.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(LookupError, match="mode"):
        binarize(p, 0.5, "soft")
    x = torch.zeros(3, requires_grad=True)
    bpda(torch.ones(3), x * 2).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0, 2.0]


def test_registry_and_declared_gradients():
    assert {"lgs", "slgs", "wlgs", "jpeg", "median-filter", "gaussian-filter", "gt-mask",
            "patchcleanser"} <= set(names())
    assert isinstance(get("LGS", smoothing_factor=3.5), LGS)
    assert isinstance(get("gt_mask"), GTMaskOracle)
    with pytest.raises(LookupError, match="available"):
        get("no-such-defense")
    for name in ("lgs", "slgs", "wlgs", "jpeg", "median-filter", "gaussian-filter", "gt-mask",
                 "patchcleanser"):
        kw = ({"patch_size": 2, "image_size": 8} if name == "patchcleanser"
              else {"model": tiny_model()} if name in ("slgs", "wlgs") else {})
        d = get(name, **kw)
        assert d.gradient in GRADIENTS and d.name == name


def test_bad_inputs_raise_clear_errors():
    lgs, model = LGS(), tiny_model()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lgs(images() * 2)
    with pytest.raises(ValueError, match="N×C×H×W"):
        lgs(torch.rand(3, 8))
    with pytest.raises(TypeError, match="floating"):
        lgs(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        Defended(model, lgs)(images(1, 1))
    with pytest.raises(TypeError, match="Defense"):
        Defended(model, nn.Identity())
    with pytest.raises(TypeError, match="prediction-level"):
        PatchCleanser(2, 8)(images(1, 3, 8))
    with pytest.raises(ValueError, match="overlap"):
        LGS(window=5, overlap=5)
    with pytest.raises(ValueError, match="odd"):
        MedianFilter(4)
    with pytest.raises(ValueError, match="quality"):
        JPEG(quality=100)


class BrightnessVsTexture(nn.Module):
    """Class 0 ("smooth") unless local high-frequency texture is strong: a textured patch fools it."""

    def forward(self, x):
        g = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        return torch.stack([torch.full_like(g, 0.05), g], 1) * 100


def test_gt_mask_oracle_restores_the_clean_prediction():
    model = ImageClassifier(BrightnessVsTexture(), [0.0], [1.0], None, ["smooth", "texture"], 1)
    x = torch.linspace(0.3, 0.7, 32).view(1, 1, 32, 1).expand(2, 1, 32, 32).clone()   # smooth
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 4:14, 4:14] = 1
    mask[1, :, 18:30, 10:22] = 1
    i = torch.arange(32)
    patch = ((i[:, None] + i[None, :]) % 2).float().expand(2, 1, 32, 32)
    x_adv = x * (1 - mask) + patch * mask              # a checkerboard patch
    assert model(x).argmax(1).tolist() == [0, 0]
    assert model(x_adv).argmax(1).tolist() == [1, 1]
    oracle = GTMaskOracle(fill=0.5)
    assert model(oracle(x_adv, mask=mask)).argmax(1).tolist() == [0, 0]
    bound = oracle.with_mask(mask)          # the oracle for these images (it knows their mask)
    target = Defended(model, bound)
    assert target.predict(x_adv)[0].tolist() == [0, 0]
    # pixels outside the mask are untouched; inside they are the dataset mean
    out = bound(x_adv)
    assert torch.equal(out[mask == 0], x_adv[mask == 0])
    assert (out[mask == 1] == 0.5).all()
    # an adaptive attacker gets no gradient through the patch pixels
    xr = x_adv.clone().requires_grad_(True)
    target(xr)[:, 1].sum().backward()
    assert (xr.grad[mask == 1] == 0).all() and xr.grad[mask == 0].abs().sum() > 0


def test_gt_mask_oracle_fill_and_errors():
    x = torch.rand(2, 3, 8, 8)
    m = torch.zeros(2, 1, 8, 8)
    m[..., :2, :2] = 1
    out = GTMaskOracle()(x, mask=m)                    # ImageNet mean by default for RGB
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.485, 0.456, 0.406]))
    with pytest.raises(ValueError, match="does not know where the patch is"):
        GTMaskOracle()(x)
    with pytest.raises(ValueError, match="mask"):
        GTMaskOracle()(x, mask=torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        GTMaskOracle(fill=(0.1, 0.2))(x, mask=m)
    with pytest.raises(ValueError, match="fill"):
        GTMaskOracle(fill=2.0)
