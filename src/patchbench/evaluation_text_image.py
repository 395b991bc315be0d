"""The text-image evaluation cell (``pb.evaluate(..., task="text-image")``): TTH's protocol (Hu, Chen
& Li, ICASSP 2023) as PAIR's Table 1 uses it (ACM MM 2024, §5.1) for a dual encoder behind a defense.

1. the queries: every gallery caption containing the keyword, each relevant to its own image;
   ``clean`` R@k = the share whose image is in their top k on the gallery;
2. the target ``e_t``: the normalised mean text embedding of up to 500 *training* captions with the
   keyword (``train_captions``; or given directly as ``target``); for ``TTH(targets="clusters")``
   (our stronger attacker) one per ad, :func:`patchbench.tasks.text_image.target_clusters`;
3. the ad images ``x`` (whose scenes lack the keyword) get the universal patch, trained on the bare
   image tower (non-adaptive) or on ``Defended(ImageEmbedder(model), defense)`` (adaptive: EOT over a
   randomised defense's draws, BPDA where the defense declares it, as in Retrieval I); a patch may
   be trained on other ads (``attack_train``) or reused (``attack_result``);
4. the patched ads join the gallery → ``irrelevant`` R@k (queries with any ad in their top k) and
   ``relevant`` R@k (queries whose own image stays in their top k). Without an attack the
   unpatched ads join it (the baseline an ad gets for free).

Which images the defense purifies (our choice, stated here): every gallery image, ads included.
Poisoning puts the ads in the gallery, not in the queries, so a purifier that protects the index
must run on everything it indexes; it cannot single out the ads (that would be the GT-mask
oracle's knowledge, which ``for_result`` gives only the oracle). The clean gallery is purified once
(one draw of a randomised defense per image, as deployed) and is the same for both halves of the
table; ``purify_gallery`` (a retrieval option) is therefore refused here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validation import check_bool, check_images, check_positive_int, make_generator
from .tasks import text_image as T


def check_text_image_model(model):
    """A model with the ``TextImageModel`` protocol's two encoders and ``embed_dim``."""
    for attr in ("encode_image", "encode_text"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(f"model: expected a text-image model (TextImageModel protocol: "
                            f"encode_image, encode_text, embed_dim) for task='text-image', got "
                            f"{type(model).__name__}")
    check_positive_int(getattr(model, "embed_dim", None), "model.embed_dim")
    return model


def check_text_gallery(gallery, channels):
    """``(images M×C×H×W, captions)``: one caption or a list of captions per image."""
    if not isinstance(gallery, (tuple, list)) or len(gallery) != 2:
        raise TypeError(f"gallery: expected (gallery images M×C×H×W, their captions), got "
                        f"{type(gallery).__name__}")
    images, captions = gallery
    images = check_images(images, "gallery images", channels=channels)
    return images, T.check_gallery_captions(captions, images.shape[0])


def _embed(tower, x: Tensor, batch_size: int) -> Tensor:
    """Unit image embeddings of ``tower`` (or ``Defended``: one draw) on ``x``, batched, no grad."""
    from ._io import predict_batched
    return predict_batched(tower, x, batch_size, reduce=lambda z: F.normalize(z.float(), dim=1))


def _side(threat, x: Tensor):
    h, _ = threat.patch_size(tuple(x.shape[-2:]))
    return round(h / x.shape[-2], 4), getattr(threat, "shape", None)


def evaluate_text_image(t, model, x, y, attack, defense, threat, adaptive, generator, batch_size,
                        attack_result, target, gallery, k, purify_gallery, attack_train,
                        keyword, train_captions):
    """The text-image cell (see the module docstring); called by :func:`patchbench.evaluate`."""
    from .attacks.tth import check_target_embedding, tth_threat
    from .defenses.base import Defended
    from .evaluation import Evaluation, _check_attack_result, _name
    from .tasks.classification import attacker_label

    check_text_image_model(model)
    channels = getattr(model, "channels", None)
    if y is not None:
        raise ValueError("y: text-image cells have no labels (x are the ad images, the queries "
                         "come from the gallery captions); pass y=None and keyword=")
    if isinstance(x, Tensor) and x.dim() == 4 and x.shape[0] == 0:
        raise ValueError("x: the ad image set is empty; pass the attacker's ad images (e.g. "
                         "patchbench.data.captions.ad_images(keyword))")
    x = check_images(x, "x (ad images)", channels=channels)
    if keyword is None:
        raise ValueError("keyword: task='text-image' needs the keyword the ads target (its "
                         "queries are the gallery captions that contain it)")
    keyword = T.check_keyword(keyword)
    if gallery is None:
        raise ValueError("gallery: task='text-image' needs the gallery: gallery=(images, "
                         "captions per image)")
    if check_bool(purify_gallery, "purify_gallery"):
        raise ValueError("purify_gallery: a retrieval option; a text-image cell always purifies "
                         "the whole gallery, ads included (see patchbench.evaluation_text_image)")
    db_x, db_captions = check_text_gallery(gallery, channels)
    m = db_x.shape[0]
    k = T.TOPK if k is None else check_positive_int(k, "k")
    if k > m:
        raise ValueError(f"k: the top {k} of a gallery of {m} images; use k <= {m}")
    if attack_train is not None and attack is None:
        raise ValueError("attack_train: ad images to train the patch on need attack=")
    if attack_result is not None:
        _check_attack_result(attack_result, x, adaptive, defense)
    g = make_generator(generator, device=x.device.type if x.device.type == "cuda" else "cpu")
    queries, true_index = T.keyword_queries(db_captions, keyword)
    true_index = true_index.to(x.device)
    attacking = attack is not None or attack_result is not None
    e_t = None
    if target is not None:
        e_t = check_target_embedding(target, int(model.embed_dim)).to(x.device)
    elif attacking:
        if train_captions is None:
            raise ValueError("train_captions: the attack needs the target embedding e_t; pass the "
                             "attacker's training captions (e.g. the scenes set's train captions) "
                             "or target=e_t")
        if getattr(attack, "targets", "mean") == "clusters":
            e_t = T.target_clusters(model, train_captions, keyword, x.shape[0],
                                    generator=g).to(x.device)
        else:
            e_t = T.target_embedding(model, train_captions, keyword, generator=g).to(x.device)
    if threat is None:
        threat = tth_threat(tuple(x.shape[-2:]))
    uses_mask = defense is not None and bool(defense.uses_true_mask)
    tower = T.ImageEmbedder(model)

    def behind(d):
        return tower if d is None else Defended(tower, d).eval()

    gal = _embed(behind(None if defense is None else defense.for_result(None)), db_x,
                 batch_size).to(x.device)
    q = F.normalize(T.encode_text_batched(model, queries).float(), dim=1).to(x.device)
    sim_clean = q @ gal.t()
    res = None
    if attacking:
        res = attack_result
        if res is None:
            e_dir = e_t if e_t.dim() == 1 else F.normalize(e_t.mean(0), dim=0)
            thr = float(torch.topk(gal @ e_dir, k).values[-1])
            res = _run_attack(attack, tower, x, defense, threat, adaptive, g, e_t, thr,
                              attack_train, behind, uses_mask)
        ads = _embed(behind(None if defense is None else defense.for_result(res)), res.x_adv,
                     res.x_adv.shape[0] if uses_mask else batch_size)
    else:
        ads = _embed(behind(None if defense is None else defense.for_result(None)), x,
                     x.shape[0] if uses_mask else batch_size)
    ads = ads.to(x.device)
    sim_poisoned = q @ torch.cat([gal, ads]).t()
    ad_mask = torch.zeros(m + ads.shape[0], dtype=torch.bool, device=x.device)
    ad_mask[m:] = True
    who = "none" if res is None else attacker_label(attack if attack is not None else res,
                                                    adaptive, defense)
    metrics = t.cell_metrics(sim_clean, true_index, k, sim_poisoned, ad_mask, keyword=keyword,
                             attacker=who)
    eot = None
    if res is not None:
        eot = Defended(tower, defense).eot_samples if (adaptive and defense is not None and
                                                       defense.randomized) else 1
    side, shape = _side(threat, x) if res is not None else (None, None)
    metrics.update(eot_samples=eot, patch_side=side, shape=shape)
    s = t.scores(sim_clean, true_index, k, sim_poisoned, ad_mask)
    outputs = {"queries": queries, "true_index": true_index, "sim_clean": sim_clean,
               "sim_poisoned": sim_poisoned, "ad_mask": ad_mask, "target": e_t,
               "gallery_embeddings": gal, "ad_embeddings": ads}
    return Evaluation(s["clean"], s["relevant"], s["irrelevant"], adaptive,
                      _name(defense, "undefended"),
                      _name(attack, "attack" if res is not None else "none"), res, t.name, who,
                      None, None, metrics, outputs=outputs)


def _run_attack(attack, tower, x: Tensor, defense, threat, adaptive: bool, g, e_t: Tensor,
                threshold: float, attack_train, behind, uses_mask: bool):
    """The attack on its victim (the bare image tower, or ``Defended`` around it for an adaptive
    attacker); trained on ``attack_train`` (other ad images) when given, then applied to ``x``."""
    victim = tower
    if adaptive and defense is not None:
        if uses_mask and not getattr(attack, "per_image", True):
            raise ValueError(f"adaptive: the GT-mask oracle must know the patch mask before the "
                             f"attack runs, but {type(attack).__name__} draws its placements "
                             f"while it trains; use adaptive=False")
        victim = behind(defense)
    kw = {"target": e_t}
    if attack_train is None:
        return attack.run(victim, x, None, threat, generator=g, threshold=threshold, **kw)
    if not (callable(getattr(attack, "fit", None)) and callable(getattr(attack, "apply", None))):
        raise TypeError(f"attack_train: {type(attack).__name__} is not a universal attack with "
                        f"fit/apply; drop attack_train to train on the ads themselves")
    train = attack_train[0] if isinstance(attack_train, (tuple, list)) else attack_train
    train = check_images(train, "attack_train", channels=x.shape[1])
    patch = attack.fit(victim, train, threat, generator=g, **kw)
    res = attack.apply(victim, x, None, threat, patch, generator=g, threshold=threshold, **kw)
    res.history = list(getattr(attack, "history_", []))
    return res
