"""SAC (Liu et al., CVPR 2022): shape completion, removal, straight-through gradients, checkpoints,
self adversarial training."""
import itertools

import pytest
import torch

from patchbench import defenses
from patchbench.defenses.base import Defended
from patchbench.defenses.patchzero import PatchZero
from patchbench.defenses.sac import (SAC, shape_completion, sizes_for_area,
                                     square_l1_distances)
from patchbench.models.base import ImageClassifier
from patchbench.models.unet import UNet

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


def _square(h=28, w=28, top=5, left=9, side=8, n=1):
    m = torch.zeros(n, 1, h, w)
    m[..., top:top + side, left:left + side] = 1
    return m


class _MaskDetector(torch.nn.Module):
    """Logits +5 on a fixed mask and −5 elsewhere, plus a small dependence on x (for gradients)."""

    channels, input_size = 1, (28, 28)

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x):
        return 10 * self.mask - 5 + 0.01 * x[:, :1]


def _reference(mask, sizes, gamma=0.9, decay=0.7, tries=15, alignment="paper"):
    """The authors' ShapeCompletionL1 by brute force: loops over γ levels, sizes and positions."""
    out = torch.zeros_like(mask)
    for n in range(mask.shape[0]):
        m = mask[n, 0]
        h, w = m.shape
        g = gamma
        for _ in range(tries):
            kept = []
            for s in sizes:
                for i, j in itertools.product(range(h - s + 1), range(w - s + 1)):
                    if alignment == "authors" and (i == 0 or j == 0):
                        continue
                    q = torch.zeros_like(m)
                    q[i:i + s, j:j + s] = 1
                    if float((q - m).abs().sum()) / (s * s) < 1 - g:
                        a = 1 if alignment == "authors" else 0
                        kept.append((i - a, j - a, s))
            if kept:
                for i, j, s in kept:
                    out[n, 0, i:i + s, j:j + s] = 1
                break
            g *= decay
    return out


# ---------------------------------------------------------------- shape completion
def test_cumsum_l1_distance_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(3, 1, 12, 10, generator=g) < 0.3).float()
    for s in (1, 3, 10):
        d = square_l1_distances(m, s)
        assert d.shape == (3, 13 - s, 11 - s)
        for n, i, j in itertools.product(range(3), range(13 - s), range(11 - s)):
            q = torch.zeros(12, 10)
            q[i:i + s, j:j + s] = 1
            assert d[n, i, j] == (q - m[n, 0]).abs().sum()   # |q \ m| + |m \ q|


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alignment", ["paper", "authors"])
def test_batched_completion_matches_the_looped_algorithm(alignment, device):
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(6, 1, 16, 16)
    for n in range(5):                       # a square with holes and stray pixels; image 5 empty
        t, l = torch.randint(0, 10, (2,), generator=g).tolist()
        masks[n, 0, t:t + 6, l:l + 6] = (torch.rand(6, 6, generator=g) < 0.4 + 0.12 * n).float()
        masks[n, 0] = torch.maximum(masks[n, 0], (torch.rand(16, 16, generator=g) < 0.03).float())
    got = shape_completion(masks.to(device), (7, 5), alignment=alignment)
    assert got.device.type == device
    assert torch.equal(got.cpu(), _reference(masks, (7, 5), alignment=alignment))
    assert got[5].sum() == 0


def test_a_noisy_square_is_completed_to_exactly_the_square():
    m = _square()
    m[0, 0, 6, 10] = m[0, 0, 9, 12] = m[0, 0, 12, 16] = 0    # missed patch pixels
    m[0, 0, 20, 3] = 1                                         # a stray false positive
    for sizes in ((8,), (10, 8, 6)):
        assert torch.equal(shape_completion(m, sizes), _square())


def test_a_sparse_mask_is_completed_after_gamma_decays():
    m = _square()
    m[..., 5:13, 9:17] *= ((torch.arange(8)[:, None] + torch.arange(8)) % 2 == 0).float()  # 32/64
    assert float(square_l1_distances(m, 8).min()) / 64 == 0.5     # > 1 − 0.9 and > 1 − 0.63
    assert torch.equal(shape_completion(m, 8), _square())          # kept at γ = 0.441
    assert shape_completion(m, 8, tries=2).sum() == 0              # not within two tries


def test_a_mask_close_to_the_patch_always_covers_it():
    """The guarantee: Hamming distance < (1 − γ)·s² from the true square ⇒ the square is removed."""
    g = torch.Generator().manual_seed(2)
    truth = _square(side=10, n=1)
    for _ in range(20):
        m = truth.clone().flatten()
        flip = torch.randperm(m.numel(), generator=g)[:9]           # 9 < 0.1 · 10²
        m[flip] = 1 - m[flip]
        out = shape_completion(m.view_as(truth), (12, 10, 8))
        assert bool((out >= truth).all())


def test_far_blobs_complete_the_larger_one_and_leave_the_other():
    m = _square(top=2, left=2, side=7)
    m[..., 20:23, 20:23] = 1                     # a 3×3 false positive far away
    out = shape_completion(m, 7)
    assert torch.equal(out, _square(top=2, left=2, side=7))       # the blob stays unremoved
    twins = _square(top=2, left=2, side=7) + _square(top=19, left=19, side=7)
    assert shape_completion(twins, 7).sum() == 0  # two equal patches: no square is within d/s² < 1


def test_a_lone_false_positive_pixel_is_grown_into_every_square_holding_it():
    """d/s² = 48/49 for each of the 49 squares holding one pixel: kept once 1 − γ > 0.98 (try 12)."""
    m = torch.zeros(1, 1, 28, 28)
    m[0, 0, 14, 14] = 1
    assert shape_completion(m, 7, tries=11).sum() == 0
    assert torch.equal(shape_completion(m, 7, tries=12), _square(top=8, left=8, side=13))


def test_empty_mask_removes_nothing():
    assert shape_completion(torch.zeros(2, 1, 28, 28), (7, 6)).sum() == 0
    x = torch.rand(2, 1, 28, 28)
    sac = SAC(_MaskDetector(torch.zeros(1, 1, 28, 28)), square_sizes=(7, 6))
    assert torch.equal(sac(x), x)


# ---------------------------------------------------------------- the defense
def test_pixels_outside_the_removed_square_are_unchanged():
    raw = _square(side=6)
    raw[0, 0, 6, 10] = 0
    sac = SAC(_MaskDetector(raw), square_sizes=6, fill=0.25)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out, m = sac(x), sac.predict_mask(x)
    assert torch.equal(m, _square(side=6, n=3))
    assert torch.equal(sac.predict_mask(x, completed=False), raw.expand(3, 1, 28, 28))
    assert torch.equal(out[m == 0], x[m == 0])                   # bit-identical outside
    assert torch.equal(out[m == 1], torch.full_like(out[m == 1], 0.25))
    with_union = SAC(_MaskDetector(raw + _square(top=20, left=20, side=2)), square_sizes=6,
                     union=True).predict_mask(x)
    assert int(with_union[0].sum()) == 36 + 4


def _classifier():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    return ImageClassifier(net, (0.5,), (0.5,), None, [str(i) for i in range(10)], channels=1)


def test_straight_through_gradient_reaches_removed_pixels_and_exact_does_not():
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    grads = {}
    for mode in ("bpda-straight-through", "bpda-sigmoid", "exact"):
        sac = SAC(_MaskDetector(_square(side=6)), square_sizes=6, gradient=mode)
        xi = x.clone().requires_grad_(True)
        target = Defended(_classifier(), sac)
        target(xi).logsumexp(1).sum().backward()
        assert torch.isfinite(xi.grad).all()
        grads[mode] = xi.grad
        with torch.no_grad():
            assert torch.equal(sac(x), SAC(_MaskDetector(_square(side=6)), square_sizes=6)(x))
    inside = _square(side=6, n=2).bool()
    assert float(grads["exact"][inside].abs().sum()) == 0           # removed pixels: constant
    assert float(grads["bpda-straight-through"][inside].abs().sum()) > 0
    assert float(grads["bpda-sigmoid"][inside].abs().sum()) > 0
    assert not torch.equal(grads["exact"][~inside], grads["bpda-straight-through"][~inside])


def test_straight_through_reaches_the_segmenter_weights():
    class Biased(torch.nn.Module):           # a U-Net pushed to flag a 7×7 square
        channels, input_size = 1, (28, 28)

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.unet = UNet(1, base=4, input_size=(28, 28))

        def forward(self, x):
            return self.unet(x) + 20 * _square(side=7) - 10

    for mode, reaches in (("bpda-straight-through", True), ("exact", False)):
        sac = SAC(Biased(), square_sizes=(7, 6), gradient=mode)
        x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        assert int(sac.predict_mask(x).sum()) >= 2 * 49
        sac(x.requires_grad_(True)).sum().backward()
        g = sum(float(p.grad.abs().sum()) for p in sac.parameters() if p.grad is not None)
        assert (g > 0) == reaches, mode


def test_from_context_save_load_and_patchzero_interop(tmp_path):
    torch.manual_seed(0)
    det = UNet(1, base=4, input_size=(28, 28))
    path = SAC(det, square_sizes=(9, 8), gamma=0.8).save(tmp_path / "sac.pt", note="x")
    ctx = defenses.BuildContext(image_size=(28, 28), channels=1, patch_area=0.05,
                                artifacts={"sac_fmnist": path})
    d = defenses.build("sac", ctx, checkpoint="@sac_fmnist")
    assert isinstance(d, SAC) and d.square_sizes == sizes_for_area(0.05, (28, 28)) == (7, 6)
    assert d.gamma == 0.8 and d.gradient == "bpda-straight-through" and not d.training
    assert SAC.load(path).square_sizes == (9, 8)
    assert defenses.build("sac", defenses.BuildContext(), checkpoint=path).square_sizes == (9, 8)
    assert defenses.build("sac", ctx, checkpoint=path, square_sizes=5, tries=3).tries == 3
    assert defenses.build("sac", ctx, detector=det).square_sizes == (7, 6)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(SAC.load(path)(x), SAC(det.eval(), square_sizes=(9, 8), gamma=0.8)(x))
    assert type(PatchZero.load(path)) is PatchZero                   # the segmenter alone
    pz = PatchZero(det, dilation=0).save(tmp_path / "pz.pt")
    assert SAC.load(pz, square_sizes=7).square_sizes == (7,)
    with pytest.raises(ValueError, match="square_sizes"):
        SAC.load(pz)
    with pytest.raises(ValueError, match="checkpoint"):
        defenses.build("sac", ctx)
    with pytest.raises(ValueError, match="square_sizes"):
        defenses.build("sac", defenses.BuildContext(), detector=det)
    with pytest.raises(TypeError, match="bogus"):
        defenses.build("sac", ctx, checkpoint=path, bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        defenses.build("sac", ctx, detector=det, bogus=1)
    with pytest.raises(ValueError, match="trained for 28"):
        defenses.build("sac", defenses.BuildContext(image_size=(32, 32)), checkpoint=path)
    with pytest.raises(FileNotFoundError):
        SAC.load(tmp_path / "missing.pt")


def test_bad_inputs_are_rejected():
    det = _MaskDetector(_square())
    with pytest.raises(ValueError, match="square_sizes"):
        SAC(det, square_sizes=30)                                    # larger than 28×28
    free = _MaskDetector(_square())
    free.input_size = None
    with pytest.raises(ValueError, match="square_sizes"):
        SAC(free, square_sizes=20)(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="square_sizes"):
        shape_completion(torch.zeros(1, 1, 8, 8), 9)
    with pytest.raises(ValueError, match="mask"):
        shape_completion(torch.zeros(8, 8), 3)                       # not N×1×H×W
    with pytest.raises(ValueError, match="0 or 1"):
        shape_completion(torch.full((1, 1, 8, 8), 0.5), 3)
    with pytest.raises(TypeError, match="mask"):
        square_l1_distances([[0, 1]], 1)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        SAC(det, square_sizes=6)(torch.full((1, 1, 28, 28), 2.0))
    with pytest.raises(ValueError, match="channels"):
        SAC(det, square_sizes=6)(torch.rand(1, 3, 28, 28))
    for kw, err, word in ((dict(gradient="bpda-magic"), LookupError, "gradient"),
                          (dict(alignment="left"), LookupError, "alignment"),
                          (dict(gamma=1.0), ValueError, "gamma"),
                          (dict(decay=0), ValueError, "decay"),
                          (dict(tries=0), ValueError, "tries"),
                          (dict(square_sizes=[]), ValueError, "square_sizes"),
                          (dict(square_sizes="7"), TypeError, "square_sizes"),
                          (dict(union="yes"), TypeError, "union")):
        with pytest.raises(err, match=word):
            SAC(det, **{"square_sizes": 6, **kw})
    with pytest.raises(TypeError, match="bogus"):
        SAC.load("fmnist", bogus=1)


# ---------------------------------------------------------------- self adversarial training
from patchbench.training import sac as tsac  # noqa: E402


def _cfg(**kw):
    base = dict(classifier="tiny_cnn", classifier_kwargs=dict(channels=1), n_train=8, batch_size=8,
                epochs_stage1=1, epochs_stage2=2, attack_steps=2, sat_steps=2, unet_base=4,
                progress=False, seed=1)
    base.update(kw)
    return tsac.SACTrainConfig(**base)


def test_segmenter_attack_changes_only_patch_pixels_and_raises_the_loss():
    torch.manual_seed(0)
    det = UNet(1, base=4, input_size=(28, 28))
    x = torch.rand(4, 1, 28, 28)
    m = _square(side=6, n=4)
    x_adv = tsac.segmenter_attack(det, x, m, steps=3, step=0.1)
    assert torch.equal(x_adv[m == 0], x[m == 0]) and 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        assert bce(det(x_adv), m) > bce(det(x), m)


def test_training_resumes_after_an_interruption_and_matches_an_uninterrupted_run(tmp_path,
                                                                               monkeypatch):
    cfg = _cfg()
    ref = torch.load(tsac.train_sac(cfg, tmp_path / "a"), weights_only=True)
    real, calls = tsac._epoch, []

    def crashing(stage, epoch, *a, **k):
        if (stage, epoch) == (2, 1):
            raise KeyboardInterrupt
        return real(stage, epoch, *a, **k)

    monkeypatch.setattr(tsac, "_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        tsac.train_sac(cfg, tmp_path / "b")
    assert (tmp_path / "b" / "sac_stage1.pt").is_file()

    def recording(stage, epoch, *a, **k):
        calls.append((stage, epoch))
        return real(stage, epoch, *a, **k)

    monkeypatch.setattr(tsac, "_epoch", recording)
    out = torch.load(tsac.train_sac(cfg, tmp_path / "b"), weights_only=True)
    assert calls == [(2, 1)]                                  # finished epochs are not redone
    for k, v in ref["state_dict"].items():
        assert torch.allclose(v, out["state_dict"][k], atol=1e-6), k
    assert [(h["stage"], h["epoch"]) for h in out["meta"]["history"]] == [(1, 1), (2, 1), (2, 2)]
    assert out["meta"]["sac"]["square_sizes"] == [7, 6]
    with pytest.raises(ValueError, match="different config"):
        tsac.train_sac(_cfg(p_clean=0.5), tmp_path / "b")


def test_short_training_finds_the_training_patches_better_than_the_untrained_segmenter(tmp_path):
    cfg = _cfg(n_train=16, epochs_stage1=8, epochs_stage2=0, lr=1e-2, pos_weight=5.0, p_clean=0.0)
    trained = SAC.load(tsac.train_sac(cfg, tmp_path))
    cache = torch.load(tmp_path / "stage1_attacks.pt", weights_only=True)
    x_adv, mask = cache["x_adv"].float() / 255, cache["mask"].float()
    untrained = SAC(tsac.pzt._new_detector(cfg.patchzero_config(), 1, (28, 28)).eval(),
                    square_sizes=(7, 6))

    def iou(d):
        p = d.predict_mask(x_adv, completed=False).bool()
        return float((p & mask.bool()).sum() / (p | mask.bool()).sum())

    assert iou(trained) > iou(untrained) + 0.1, (iou(untrained), iou(trained))


def test_cli_config_and_bad_values(tmp_path, capsys):
    f = tmp_path / "sac.toml"
    f.write_text('[sac]\nclassifier = "tiny_cnn"\nclassifier_kwargs = { channels = 1 }\n'
                 'n_train = 8\nbatch_size = 8\nepochs_stage1 = 1\nepochs_stage2 = 0\n'
                 'attack_steps = 1\nunet_base = 4\nprogress = false\n'
                 f'out_dir = "{(tmp_path / "run").as_posix()}"\n')
    assert tsac.main_train_sac(["--config", str(f)]) == 0
    assert SAC.load(capsys.readouterr().out.strip().splitlines()[-1]).square_sizes == (7, 6)
    with pytest.raises(ValueError, match="SACTrainConfig.p_clean"):
        _cfg(p_clean=1.0)
    with pytest.raises(LookupError, match="sat_target"):
        _cfg(sat_target="detector")
    with pytest.raises(ValueError, match="SACTrainConfig.n_train"):
        _cfg(n_train=0)
    with pytest.raises(ValueError, match="SACTrainConfig.area_min"):
        _cfg(area_min=0.2, area_max=0.1)
    bad = tmp_path / "bad.toml"
    bad.write_text("[sac]\nbogus = 1\n")
    with pytest.raises(ValueError, match="bogus"):
        tsac.SACTrainConfig.from_toml(bad)
    with pytest.raises(TypeError, match="config"):
        tsac.train_sac({"n_train": 8}, tmp_path / "x")


@pytest.mark.parametrize("variant", [dict(sat_target="defended"), dict(sat_init="do")])
def test_self_adversarial_variants_run_one_epoch(tmp_path, variant):
    cfg = _cfg(epochs_stage1=1 if "sat_init" in variant else 0, epochs_stage2=1, **variant)
    assert SAC.load(tsac.train_sac(cfg, tmp_path)).square_sizes == (7, 6)
