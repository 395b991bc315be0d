"""Common contract checks (scikit-learn's ``check_estimator`` idea, issue 12).

Every registered attack, defense, corruption and zoo model goes through the same checks, so anything
added to a registry later is covered without a new test:

* output shape, dtype and [0, 1] range; CPU, plus CUDA where present;
* bit-identical output for the same seed;
* attacks: pixels outside the mask unchanged, and ``success`` that is true of the returned images and
  agrees with :func:`patchbench.metrics.success_rate`;
* defenses: the declared gradient rule honoured (exact rules give finite gradients, ``bpda-identity``
  passes the upstream gradient unchanged) and deterministic defenses declared as such.

Each attack runs on its own task (``attack.task``): classification attacks on a small CNN, the
face-hiding patch on MTCNN and a small face photo. Every defense is built by the registry from one
:class:`~patchbench.defenses.BuildContext` (the model, image size, patch area); a defense that needs
an option the context cannot give (PatchZero's detector) gets one line in ``DEFENSE_OPTIONS``.
"""
from __future__ import annotations

import functools
import inspect

import pytest
import torch
from torch import nn

from patchbench import attacks, corruptions, defenses, tasks
from patchbench.metrics import success_rate
from patchbench.models import zoo
from patchbench.models.base import ImageClassifier
from patchbench.patches import Threat

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]
SIZE = 32


@functools.lru_cache(maxsize=None)
def _model(device: str = "cpu") -> ImageClassifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                        nn.Flatten(), nn.Linear(128, 6))
    return ImageClassifier(net, [0.5] * 3, [0.25] * 3, None, [f"c{i}" for i in range(6)], 3,
                           "contract-cnn").eval().to(device)


def _images(n: int = 4, device: str = "cpu", seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g).to(device)


def _labels(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


# ---- attacks ---------------------------------------------------------------------------------
_FAST = {"steps": 3, "epochs": 2, "iterations": 3, "restarts": 1, "batch_size": 4,
         "binary_steps": 1, "eot_samples": 1}


_FAST_FACE = {"epochs": 1, "patch_size": 12, "batch_size": 2, "stages": ("onet",)}


def _fast_attack(name: str):
    params = inspect.signature(attacks.get.__globals__["_ATTACKS"]._classes[name]).parameters
    fast = _FAST_FACE if _task(name) == "face-detection" else _FAST
    return attacks.get(name, **{k: v for k, v in fast.items() if k in params})


def _task(name: str) -> str:
    return tasks.get(attacks.get.__globals__["_ATTACKS"].lookup(name).task).name


@functools.lru_cache(maxsize=None)
def _detector(device: str = "cpu"):
    from patchbench.models.mtcnn import load_mtcnn
    return load_mtcnn(device=device)


def _faces(device: str = "cpu"):
    """Two 64×64 crops of the astronaut photo (face ≈ 20×24 px) and their face boxes."""
    import torch.nn.functional as F
    from patchbench.data.faces import ASTRONAUT_FACE_BOX, real_faces
    x = F.interpolate(real_faces().images, size=(112, 112), mode="area")
    box = torch.tensor([ASTRONAUT_FACE_BOX]) * 112 / 512
    x = torch.cat([x[..., 8:72, 24:88], x[..., 12:76, 28:92]]).contiguous()
    boxes = [box - torch.tensor([24.0, 8, 24, 8]), box - torch.tensor([28.0, 12, 28, 12])]
    return x.to(device), boxes


def _face_attack_contract(name, device):
    det = _detector(device)
    x, y = _faces(device)
    res = _fast_attack(name).run(det, x, y, None, generator=torch.Generator().manual_seed(3))
    again = _fast_attack(name).run(det, x, y, None, generator=torch.Generator().manual_seed(3))
    _common_attack_checks(res, again, x, device)
    task = tasks.get("face-detection")
    assert res.success.dtype == torch.bool and res.success.shape == (x.shape[0],)
    truth = task.success(det.detect(res.x_adv), y, res.info["patch_boxes"], _fast_attack(name).delta)
    assert torch.equal(res.success.cpu(), truth), "success must be true of the returned images"
    assert res.rate.k == int((res.success & res.eligible).sum()) and res.rate.n == int(res.eligible.sum())


def _common_attack_checks(res, again, x, device):
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == torch.float32
    assert res.x_adv.device.type == device
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.mask.shape == (x.shape[0], 1, *x.shape[-2:])
    outside = (res.mask == 0).expand_as(x)
    assert torch.equal(res.x_adv[outside], x[outside]), "pixels outside the mask changed"
    assert torch.equal(res.x_adv, again.x_adv), "same seed, different images"
    assert torch.equal(res.success, again.success)


def test_every_attack_runs_on_a_known_task():
    assert {_task(name) for name in attacks.names()} <= {"classification", "face-detection",
                                                          "retrieval", "text-image"}


def _text_image_attack_contract(name, device):
    """A universal poisoning patch on a toy text-image model: the common checks, and success is
    the ad's cosine to the target embedding reaching the threshold."""
    from text_image_helpers import text_image_contract_setup
    from patchbench.tasks.text_image import cosine_to
    m, x, threat, e_t, thr = text_image_contract_setup(device)

    def run():
        return _fast_attack(name).run(m, x, None, threat, target=e_t, threshold=thr,
                                      generator=torch.Generator().manual_seed(3))

    res, again = run(), run()
    _common_attack_checks(res, again, x, device)
    with torch.no_grad():
        assert torch.equal(res.success, cosine_to(m.encode_image(res.x_adv), e_t) >= thr)


def _retrieval_setup(device: str = "cpu"):
    """A toy hasher, 6 queries of classes 0/1 and the anchor of target class 2 from a toy gallery."""
    from retrieval_helpers import ToyHasher, toy_images
    h = ToyHasher().to(device)
    gx, gy = toy_images(4, seed=1)
    from patchbench.tasks.retrieval import anchor
    code = anchor(h.codes(gx.to(device)), gy.to(device), 2)
    x, y = toy_images(3, seed=2, classes=2)
    return h, x.to(device), y.to(device), code


def _retrieval_attack_contract(name, device):
    h, x, y, code = _retrieval_setup(device)
    threat = Threat(area=0.1, shape="square", placement="random")
    res = _fast_attack(name).run(h, x, y, threat, target=2, target_code=code,
                                 generator=torch.Generator().manual_seed(3))
    again = _fast_attack(name).run(h, x, y, threat, target=2, target_code=code,
                                   generator=torch.Generator().manual_seed(3))
    _common_attack_checks(res, again, x, device)
    with torch.no_grad():
        truth = tasks.get("retrieval").success(h(res.x_adv), code)
    assert torch.equal(res.success.cpu(), truth.cpu()), "success must be true of the returned images"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", attacks.names())
def test_attack_contract(name, device):
    if _task(name) == "face-detection":
        return _face_attack_contract(name, device)
    if _task(name) == "retrieval":
        return _retrieval_attack_contract(name, device)
    if _task(name) == "text-image":
        return _text_image_attack_contract(name, device)
    model = _model(device)
    x = _images(device=device)
    y = _labels(model, x)
    threat = Threat(area=0.1, shape="square", placement="random")
    res = _fast_attack(name).run(model, x, y, threat, generator=torch.Generator().manual_seed(3))
    again = _fast_attack(name).run(model, x, y, threat, generator=torch.Generator().manual_seed(3))
    _common_attack_checks(res, again, x, device)

    pred_adv = _labels(model, res.x_adv)
    assert res.success.dtype == torch.bool and res.success.shape == (x.shape[0],)
    assert torch.equal(res.success.cpu(), (pred_adv != y).cpu()), \
        "success must be true of the returned images"
    rate = success_rate(y, pred_adv, y)
    assert rate.k == int(res.success.sum()) and rate.n == x.shape[0]


@pytest.mark.parametrize("name", attacks.names())
def test_targeted_attack_success_is_reaching_the_target(name):
    if _task(name) == "face-detection":   # hiding faces has no target: asking for one is an error
        x, y = _faces()
        with pytest.raises(ValueError, match="target"):
            _fast_attack(name).run(_detector(), x, y, None, target=torch.zeros(2, dtype=torch.long))
        return
    if _task(name) == "retrieval":        # always targeted: success is reaching the target's code
        return _retrieval_attack_contract(name, "cpu")
    if _task(name) == "text-image":       # always targeted: success is nearing the target embedding
        return _text_image_attack_contract(name, "cpu")
    model = _model()
    x = _images()
    y = _labels(model, x)
    # one class no image has: valid for universal patches (one target) and never equal to a label
    free = sorted(set(range(model.num_classes)) - set(y.tolist()))[0]
    target = torch.full_like(y, free)
    threat = Threat(area=0.1, shape="square", placement="random")
    res = _fast_attack(name).run(model, x, y, threat, target=target,
                                 generator=torch.Generator().manual_seed(3))
    pred_adv = _labels(model, res.x_adv)
    assert torch.equal(res.success, pred_adv == target)
    rate = success_rate(y, pred_adv, y, target=target)
    assert rate.k == int(res.success.sum())


# ---- defenses --------------------------------------------------------------------------------
def _unet():
    from patchbench.models.unet import UNet
    torch.manual_seed(0)
    return UNet(3, base=4).eval()


#: options of registered defenses beyond what the context gives (smaller windows for 32² images,
#: fewer PatchCleanser masks, an untrained U-Net as PatchZero's detector)
DEFENSE_OPTIONS = {
    "slgs": lambda: dict(window=8, overlap=2),
    "wlgs": lambda: dict(window=8, overlap=2),
    "patchcleanser": lambda: dict(k=3),
    "patchzero": lambda: dict(detector=_unet()),
    "sac": lambda: dict(detector=_unet()),
    "pair": lambda: dict(model=_mae()),
    "mae-defense": lambda: dict(model=_mae()),
}


@functools.lru_cache(maxsize=None)
def _mae():
    from patchbench.models.mae import MaskedAutoencoder
    torch.manual_seed(0)
    return MaskedAutoencoder(image_size=SIZE, patch_size=8, dim=32, depth=1, heads=2, decoder_dim=32,
                             decoder_depth=1, decoder_heads=2)


def _defense(name: str):
    ctx = defenses.BuildContext(model=_model(), image_size=(SIZE, SIZE), channels=3, patch_area=0.1)
    return defenses.build(name, ctx, **DEFENSE_OPTIONS.get(name, dict)())


def test_every_registered_defense_can_be_built():
    for name in defenses.names():
        d = _defense(name)
        assert isinstance(d, defenses.Defense), name
        assert d.gradient in defenses.GRADIENTS, name
        assert isinstance(d.randomized, bool), name
        assert d.eot_samples >= (2 if d.randomized else 1), \
            f"{name}: a randomised defense must default to EOT over >= 2 draws"


@torch.no_grad()
def _defended_scores(name, d, model, x):
    if name == "gt-mask":
        d = d.with_mask(torch.zeros_like(x[:, :1]))
    if d.output == "image":
        return d(x), d.classify(model, x)
    return None, d.classify(model, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", defenses.names())
def test_defense_contract(name, device):
    model = _model(device)
    d = _defense(name).to(device)
    x = _images(device=device)
    out, scores = _defended_scores(name, d, model, x)
    out2, scores2 = _defended_scores(name, d, model, x)
    if out is not None:
        assert out.shape == x.shape and out.dtype == torch.float32 and out.device.type == device
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        if not d.randomized:
            assert torch.equal(out, out2), f"{name} is declared deterministic but is not"
    assert scores.shape == (x.shape[0], model.num_classes) and torch.isfinite(scores).all()
    if not d.randomized:
        assert torch.equal(scores, scores2)


@pytest.mark.parametrize("name", defenses.names())
def test_defense_gradient_rule_is_honoured(name):
    model = _model()
    d = _defense(name)
    x = _images().requires_grad_(True)
    if name == "gt-mask":
        m = torch.zeros_like(x[:, :1])
        m[..., 4:12, 4:12] = 1
        d = d.with_mask(m)
    target = defenses.Defended(model, d, eot_samples=1)
    target.attack_mode = True
    target(x).logsumexp(1).sum().backward()
    g = x.grad
    assert g is not None and torch.isfinite(g).all(), f"{name}: non-finite input gradient"
    assert g.abs().sum() > 0, f"{name}: zero input gradient"
    if d.output == "image" and d.gradient == "bpda-identity":
        w = torch.randn_like(x)
        xi = x.detach().clone().requires_grad_(True)
        (d.purify(xi) * w).sum().backward()
        assert torch.equal(xi.grad, w), f"{name}: bpda-identity must pass the gradient unchanged"


# ---- corruptions -----------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_corruption_contract(name, device):
    x = _images(n=2, device=device)
    for severity in (1, corruptions.MAX_SEVERITY):
        a = corruptions.corrupt(x, name, severity, generator=5)
        b = corruptions.corrupt(x, name, severity, generator=5)
        assert a.shape == x.shape and a.dtype == torch.float32 and a.device.type == device
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and torch.isfinite(a).all()
        assert torch.equal(a, b), f"{name}: same seed, different output"
    if name not in corruptions.RANDOM:
        c = corruptions.corrupt(x, name, 3, generator=6)
        assert torch.equal(c, corruptions.corrupt(x, name, 3, generator=7)), \
            f"{name} is declared deterministic but depends on the seed"


# ---- zoo models ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", zoo.names(kind="classifier"))
def test_zoo_model_contract(name, device):
    model = zoo.load(name, device=device)
    assert not model.training
    size = model.input_size or (SIZE, SIZE)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, model.channels, *size, generator=g).to(device)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (2, model.num_classes) and a.dtype == torch.float32
    assert a.device.type == device and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert len(model.class_names) == model.num_classes
    labels, conf = model.predict(x, batch_size=1)
    assert torch.equal(labels, a.argmax(1)) and ((conf > 0) & (conf <= 1)).all()
