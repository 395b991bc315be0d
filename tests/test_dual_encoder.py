"""The CLIP-style dual encoder (models/dual_encoder.py), its trainer and the open_clip adapter.

Claims checked (CLIP, Radford et al. 2021): embeddings are unit vectors (§2.3), the loss is the
symmetric cross-entropy of Fig. 3, the temperature is learned from 0.07 and the scale clipped at
100 (§2.5), the text feature is read at [EOS] under masked self-attention (§2.4).
"""
import importlib.machinery
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patchbench.models.dual_encoder import (BOS, EOS, INIT_LOGIT_SCALE, PAD, UNK, DualEncoder,
                                            Tokenizer, build_dual_encoder, clip_loss,
                                            load_dual_encoder, save_dual_encoder)
from patchbench.models.text_image import is_text_image_model

WORDS = "a little big red blue green coat bag shirt on the left right top".split()


def tiny(tok=None, **kw):
    """A small random-init model (fast): MobileNetV2 at width 0.25, a 1-layer text tower."""
    tok = tok or Tokenizer(WORDS, context_length=8)
    opts = dict(pretrained=False, width_mult=0.25, embed_dim=16, width=16, layers=1, heads=2,
                input_size=32, seed=0)
    return build_dual_encoder(tok, **{**opts, **kw})


def local_captions(split, n):
    """Five small template captions per fmnist-scenes image (a local list for these tests)."""
    from patchbench.data.retrieval import scene_metadata
    out = []
    for meta in scene_metadata(split, n=n, size=32):
        items = meta["items"]
        names = [it["class_name"].lower() for it in items]
        out.append([f"a {it['colour']} {nm}" for it, nm in zip(items, names)][:1] +
                   [f"a {it['size']} {it['colour']} {nm} on the {it['position']}"
                    for it, nm in zip(items, names)][:1] +
                   [" and ".join(f"a {nm}" for nm in names),
                    " ".join(it["colour"] for it in items), f"{len(items)} things"])
    return out


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_layout_unknown_words_and_vocabulary_order():
    tok = Tokenizer(WORDS, context_length=8)
    ids = tok.encode(["A red coat!", "a purple bag"])
    red, coat = tok.index["red"], tok.index["coat"]
    assert ids[0].tolist() == [BOS, tok.index["a"], red, coat, EOS, PAD, PAD, PAD]
    assert ids[1, 2] == UNK and ids[1, 4] == EOS
    t2 = Tokenizer.from_captions(["b a", "a c", "a b"])
    assert t2.vocab[4:] == ["a", "b", "c"]              # most frequent first, ties alphabetical


def test_long_captions_refused_by_default_and_truncated_on_request():
    long = " ".join(["red"] * 7)                        # 7 words > 8 - 2
    tok = Tokenizer(WORDS, context_length=8)
    assert tok.truncate is False
    with pytest.raises(ValueError, match="truncate=True"):
        tok.encode(["a coat", long])
    tok.truncate = True
    ids = tok.encode([long])[0]
    assert ids[0] == BOS and ids[-1] == EOS and (ids[1:-1] == tok.index["red"]).all()
    m = tiny()
    m.truncate = True
    assert m.tokenizer.truncate and m.encode_text([long]).shape == (1, 16)


@pytest.mark.parametrize("bad, err", [([""], ValueError), (["  "], ValueError), (["?!"], ValueError),
                                      ([], ValueError), ("a coat", TypeError), ([3], TypeError)])
def test_bad_captions_are_refused(bad, err):
    with pytest.raises(err, match="caption"):
        Tokenizer(WORDS).encode(bad)


# --------------------------------------------------------------------------- the model
def test_embeddings_are_unit_vectors_and_gradients_reach_the_image():
    m = tiny()
    assert isinstance(m, DualEncoder) and is_text_image_model(m)
    assert (m.embed_dim, m.context_length, m.input_size, m.channels) == (16, 8, (32, 32), 3)
    x = torch.rand(3, 3, 40, 40, requires_grad=True)   # resized inside
    img, txt = m.encode_image(x), m.encode_text(["a red coat", "a bag", "blue"])
    assert img.shape == txt.shape == (3, 16)
    assert torch.allclose(img.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(3), atol=1e-5)
    (img @ txt.T).trace().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError):
        m.encode_image(torch.rand(2, 3, 32, 32) * 2)     # outside [0, 1]
    with pytest.raises(ValueError):
        m.encode_image(torch.rand(2, 1, 32, 32))         # one channel


@pytest.mark.parametrize("causal", [True, False])
def test_text_feature_ignores_padding(causal):
    m = tiny(causal=causal)
    ids = m.tokenizer.encode(["a red coat"])
    other = ids.clone()
    other[0, 5:] = m.tokenizer.index["bag"]              # garbage after <eos>
    a, b = m.text(ids), m.text(other)
    assert torch.allclose(a, b, atol=1e-5) == causal     # causal: nothing after [EOS] is seen
    if not causal:
        assert torch.allclose(m.text(ids), m.text(ids.clone()), atol=0)


def test_causal_mask_hides_later_tokens_from_earlier_ones():
    m = tiny()
    a = m.tokenizer.encode(["a red coat"])
    b = a.clone()
    b[0, 3] = m.tokenizer.index["bag"]                   # change the 3rd word
    b[0, 4] = m.tokenizer.index["left"]                  # and move [EOS] out of the way
    b[0, 5] = EOS
    ha = m.text.token_embedding(a) + m.text.positional_embedding
    hb = m.text.token_embedding(b) + m.text.positional_embedding
    mask = torch.ones(8, 8, dtype=torch.bool).triu(1)
    for blk in m.text.blocks:
        ha, hb = blk(ha, mask, None), blk(hb, mask, None)
    assert torch.allclose(ha[0, :3], hb[0, :3], atol=1e-6)
    assert not torch.allclose(ha[0, 3], hb[0, 3], atol=1e-4)


def test_frozen_blocks_stay_frozen_in_train_mode():
    m = tiny(trainable_from=14).train()
    assert all(not b.training for b in m.image.features[:14])
    assert all(b.training for b in m.image.features[14:])
    assert not any(p.requires_grad for p in m.image.features[:14].parameters())


def test_clip_loss_is_the_symmetric_cross_entropy_of_fig3():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 5, generator=g)
    brute = 0.0
    for i in range(5):
        brute -= 0.5 * (torch.log_softmax(logits[i], 0)[i] + torch.log_softmax(logits[:, i], 0)[i])
    assert torch.isclose(clip_loss(logits), brute / 5, atol=1e-6)
    assert torch.isclose(clip_loss(torch.zeros(4, 4)), torch.tensor(math.log(4)))


def test_temperature_starts_at_0_07_is_clipped_at_100_and_learns():
    m = tiny()
    assert math.isclose(float(m.logit_scale.detach().exp()), 1 / 0.07, rel_tol=1e-5)
    e = F.normalize(torch.randn(3, 16), dim=-1)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert torch.allclose(m.logits(e, e).diagonal(), torch.full((3,), 100.0), atol=1e-3)
    with torch.no_grad():
        m.logit_scale.fill_(INIT_LOGIT_SCALE)
    x = torch.rand(4, 3, 32, 32)
    caps = ["a red coat", "a blue bag", "a green shirt", "the big top"]
    opt = torch.optim.Adam([m.logit_scale], lr=0.05)
    for _ in range(3):
        loss = clip_loss(m.logits(m.encode_image(x), m.encode_text(caps)))
        opt.zero_grad()
        loss.backward()
        assert m.logit_scale.grad is not None and m.logit_scale.grad != 0
        opt.step()
    assert float(m.logit_scale.detach()) != pytest.approx(INIT_LOGIT_SCALE, abs=1e-3)


def test_loss_decreases_when_overfitting_four_pairs():
    torch.manual_seed(0)
    m = tiny().train()
    x = torch.rand(4, 3, 32, 32)
    caps = ["a red coat", "a blue bag", "a green shirt", "the big top"]
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        loss = clip_loss(m.logits(m.encode_image(x), m.encode_text(caps)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():                               # train mode: BatchNorm as trained
        sim = m.encode_text(caps) @ m.encode_image(x).T
    assert (sim.argmax(1) == torch.arange(4)).all()


# --------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip_and_refusals(tmp_path):
    m = tiny(trainable_from=15)
    with torch.no_grad():
        m.logit_scale.fill_(3.0)
    path = save_dual_encoder(m, tmp_path / "d.pt", meta={"name": "mine"})
    back = load_dual_encoder(path, input_size=32)
    x = torch.rand(2, 3, 32, 32)
    caps = ["a red coat", "a bag"]
    assert torch.allclose(back.encode_image(x), m.encode_image(x), atol=1e-6)
    assert torch.allclose(back.encode_text(caps), m.encode_text(caps), atol=1e-6)
    assert back.tokenizer.vocab == m.tokenizer.vocab and back.name == "mine"
    assert float(back.logit_scale.detach()) == 3.0 and back.options == m.options
    half = load_dual_encoder(save_dual_encoder(m, tmp_path / "h.pt", dtype="float16"))
    assert torch.allclose(half.encode_image(x), m.encode_image(x), atol=2e-2)
    with pytest.raises(ValueError, match="32×32 images, but 64×64"):
        load_dual_encoder(path, input_size=64)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_dual_encoder(tmp_path / "junk.pt")
    torch.save({"format": "patchbench-hasher"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a patchbench dual-encoder checkpoint"):
        load_dual_encoder(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_dual_encoder(tmp_path / "missing.pt")


def test_default_model_on_imagenet_weights_fits_5_mb_in_float16(tmp_path):
    tok = Tokenizer([f"w{i}" for i in range(120)])       # more words than our captions use
    m = build_dual_encoder(tok)                          # the shipped shape, ImageNet tower
    path = save_dual_encoder(m, tmp_path / "d.pt", dtype="float16")
    assert path.stat().st_size <= 5_000_000
    back = load_dual_encoder(path)
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(back.encode_image(x), m.encode_image(x), atol=2e-2)


# --------------------------------------------------------------------------- training
def _cfg(**kw):
    from patchbench.training.dual_encoder import DualEncoderTrainConfig
    opts = dict(image_size=32, n_train=6, embed_dim=16, width=16, layers=1, heads=2,
                trainable_from=15, pretrained=False, width_mult=0.25, epochs=2, batch_size=4,
                n_database=0, progress=False, num_threads=1)
    return DualEncoderTrainConfig(**{**opts, **kw})


def test_training_resumes_to_the_same_model_and_writes_its_files(tmp_path):
    from patchbench.training.dual_encoder import train_dual_encoder
    caps = local_captions("train", 6)
    full = load_dual_encoder(train_dual_encoder(_cfg(), tmp_path / "a", captions=caps))
    train_dual_encoder(_cfg(epochs=1), tmp_path / "b", captions=caps)
    resumed = load_dual_encoder(train_dual_encoder(_cfg(), tmp_path / "b", captions=caps))
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert (tmp_path / "b" / "metrics.json").is_file()
    with pytest.raises(ValueError, match="another dual-encoder config"):
        train_dual_encoder(_cfg(lr=0.5), tmp_path / "b", captions=caps)


def test_training_reports_text_to_image_recall(tmp_path):
    import json
    from patchbench.training.dual_encoder import train_dual_encoder
    path = train_dual_encoder(_cfg(epochs=1, n_database=5), tmp_path, captions=local_captions(
        "train", 6), database_captions=local_captions("database", 5))
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["n_images"] == 5 and m["n_queries"] == 25 and 0 <= m["r@1"] <= m["r@5"] <= 1
    assert m["r@5"] == 1.0                              # 5 images: every caption's image is in the top 5
    assert path.name == "dual_encoder.pt"


def test_text_to_image_recall_against_brute_force():
    from patchbench.training.dual_encoder import text_to_image_recall

    class Fixed(nn.Module):                             # images and captions as given embeddings
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))
            g = torch.Generator().manual_seed(1)
            self.img = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
            self.txt = {f"c{i}": F.normalize(torch.randn(4, generator=g), dim=-1) for i in range(12)}

        def encode_image(self, x):                      # image i is filled with i / 10
            return self.img[(x[:, 0, 0, 0] * 10).round().long()]

        def encode_text(self, caps):
            return torch.stack([self.txt[c] for c in caps])

    m = Fixed()
    x = (torch.arange(6).float() / 10).view(6, 1, 1, 1).expand(6, 3, 2, 2).contiguous()
    caps = [[f"c{2 * i}", f"c{2 * i + 1}"] for i in range(6)]
    got = text_to_image_recall(m, x, caps, ks=(1, 3))
    sim = torch.stack([m.txt[f"c{j}"] for j in range(12)]) @ m.img.T
    rank = (sim > sim[torch.arange(12), torch.arange(12) // 2][:, None]).sum(1)
    assert got["r@1"] == pytest.approx(float((rank < 1).float().mean()))
    assert got["r@3"] == pytest.approx(float((rank < 3).float().mean()))
    with pytest.raises(ValueError, match="one list of captions per image"):
        text_to_image_recall(m, x, caps[:5])


@pytest.mark.parametrize("field, value, err", [("n_train", 0, ValueError), ("width", 15, ValueError),
                                               ("lr", -1.0, ValueError), ("causal", "yes", TypeError),
                                               ("store_dtype", "int8", LookupError)])
def test_config_refuses_bad_fields(field, value, err):
    with pytest.raises((err, ValueError), match=field if field != "width" else "heads"):
        _cfg(**{field: value})


def test_cli_trains_with_the_scene_captions(tmp_path, capsys):
    pytest.importorskip("patchbench.data.captions")
    from patchbench.training.dual_encoder import main_train_dual_encoder
    argv = ["--out", str(tmp_path), "--image-size", "32", "--n-train", "4", "--embed-dim", "16",
            "--width", "16", "--layers", "1", "--heads", "2", "--trainable-from", "16",
            "--random-init", "--width-mult", "0.25", "--epochs", "1", "--batch-size", "4",
            "--n-database", "4", "--no-progress", "--num-threads", "1"]
    assert main_train_dual_encoder(argv) == 0
    assert "R@10 1.0000" in capsys.readouterr().out     # 4 images: all in the top 10
    m = load_dual_encoder(tmp_path / "dual_encoder.pt", input_size=32)
    assert m.encode_text(["a red coat"]).shape == (1, 16)


# --------------------------------------------------------------------------- open_clip adapter
class _FakeCLIP(nn.Module):
    """What open_clip's CLIP offers the adapter: encode_image/encode_text, visual metadata."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Module()
        self.visual.image_size = (16, 16)
        self.visual.image_mean, self.visual.image_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        self.conv = nn.Conv2d(3, 8, 16)
        self.emb = nn.Embedding(50, 8)
        self.seen = None

    def encode_image(self, x):
        self.seen = x
        return self.conv(x).flatten(1)

    def encode_text(self, ids):
        return self.emb(ids).sum(1)


def _fake_open_clip(fail=None):
    mod = types.ModuleType("open_clip")
    mod.__spec__ = importlib.machinery.ModuleSpec("open_clip", None)
    mod.list_models = lambda: ["ViT-B-32", "RN50"]
    mod.list_pretrained_tags_by_model = lambda name: ["laion2b", "openai"]
    mod.calls = []

    def create(name, pretrained=None, **kw):
        mod.calls.append((name, pretrained))
        if fail:
            raise fail
        return _FakeCLIP(), None, None
    mod.create_model_and_transforms = create

    def get_tokenizer(name):
        def tok(caps):
            return torch.tensor([[1] + [len(w) % 50 for w in c.split()][:6] +
                                 [0] * (6 - min(6, len(c.split()))) + [2] for c in caps])
        tok.context_length = 8
        return tok
    mod.get_tokenizer = get_tokenizer
    return mod


@pytest.fixture
def open_clip_source():
    from patchbench.models.open_clip_adapter import register_open_clip_source
    register_open_clip_source()


def test_open_clip_adapter_wraps_a_model_into_the_protocol(monkeypatch, open_clip_source):
    import patchbench as pb
    fake = _fake_open_clip()
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    m = pb.models.load("open_clip:ViT-B-32")
    assert is_text_image_model(m) and fake.calls == [("ViT-B-32", "openai")]
    assert (m.embed_dim, m.input_size, m.context_length, m.truncate) == (8, (16, 16), 8, True)
    x = torch.full((2, 3, 16, 32), 0.75, requires_grad=True)   # shorter side → 16, centre crop
    e = m.encode_image(x)
    assert e.shape == (2, 8) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    assert m.model.seen.shape == (2, 3, 16, 16)
    assert torch.allclose(m.model.seen, torch.ones_like(m.model.seen), atol=1e-4)  # (0.75-.5)/.25
    e.sum().backward()
    assert x.grad.abs().sum() > 0
    t = m.encode_text(["a red coat", "a bag"])
    assert t.shape == (2, 8) and torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        m.encode_text([""])
    pb.models.load("open_clip:RN50", pretrained="laion2b")
    assert fake.calls[-1] == ("RN50", "laion2b")


def test_open_clip_absent_unknown_name_and_missing_weights_errors(monkeypatch, open_clip_source):
    import patchbench as pb
    from patchbench.models.sources import MissingPackageError
    monkeypatch.setitem(sys.modules, "open_clip", None)          # not installed
    with pytest.raises(MissingPackageError, match="pip install open_clip_torch"):
        pb.models.load("open_clip:ViT-B-32")
    monkeypatch.setitem(sys.modules, "open_clip", _fake_open_clip())
    with pytest.raises(LookupError, match="no model 'ViT-B-33'.*ViT-B-32"):
        pb.models.load("open_clip:ViT-B-33")
    monkeypatch.setitem(sys.modules, "open_clip", _fake_open_clip(fail=RuntimeError("no network")))
    with pytest.raises(LookupError, match="weights=PATH"):
        pb.models.load("open_clip:ViT-B-32")
