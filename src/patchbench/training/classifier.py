"""Train a registered small classifier on Fashion-MNIST, resumably.

Recipe: AdamW (Loshchilov & Hutter, ICLR 2019) with a one-cycle learning-rate schedule (Smith &
Topin 2019, Sec. 3) over all steps, cross-entropy loss, and light augmentation — a random shift of up
to ±2 px (zero padding, the background colour) and a horizontal flip with p = 0.5, the standard
Fashion-MNIST augmentations; optionally random *stickers* (:func:`random_stickers`) and a start from
existing weights (``init``), which together make the sticker-tolerant variants of the shipped models.
A full checkpoint (model, optimiser, scheduler, all RNG states,
config) is written atomically after every epoch; with ``resume=True`` a rerun continues from the last
finished epoch and draws the same random numbers as an uninterrupted run. At the end the weights
alone (float32 ``state_dict`` of the raw network) go to ``out_path``; ``patchbench.models.load(arch,
weights=out_path)`` reads them.

Example::

    acc = train_classifier("fmnist_cnn_small", "runs/small.pt", epochs=10, seed=0)
    model = patchbench.models.load("fmnist_cnn_small", weights="runs/small.pt")
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .._io import predict_batched
from .._validation import (check_bool, check_device, check_images, check_int, check_labels,
                           check_nonnegative, check_number, check_path, check_positive,
                           check_positive_int, check_seed, trusted_inputs)
from ..models import zoo
from ..models.weights import load_file, load_state_dict_checked
from .checkpoint import load_checkpoint, save_checkpoint, save_weights


def _check_batch(x, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name}: expected float images N×C×H×W, got {got}")


def random_shift_flip(x: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Shift each image by up to ``max_shift`` px (zero fill) and flip half of them horizontally.
    ``x`` is checked for its type and shape only (no value scan: called once per training batch)."""
    _check_batch(x, "random_shift_flip: x")
    max_shift = check_int(max_shift, "random_shift_flip: max_shift", minimum=0)
    n, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, [max_shift] * 4)
    off = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator, device=generator.device).to(dev)
    rows = (off[:, 0:1] + torch.arange(h, device=dev)).view(n, 1, h, 1).expand(n, x.shape[1], h, w)
    cols = (off[:, 1:2] + torch.arange(w, device=dev)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = padded[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(x.shape[1], device=dev)
                 .view(1, -1, 1, 1), rows, cols]
    flip = torch.rand(n, generator=generator, device=generator.device).to(dev) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)


def random_stickers(x: Tensor, generator: torch.Generator, p: float = 0.5,
                    return_mask: bool = False):
    """Cover each image, with probability ``p``, by one random sticker, so a classifier learns that a
    sticker on or around an object is not the object.

    Half of the stickers are random-erasing rectangles (Zhong et al., "Random Erasing Data
    Augmentation", AAAI 2020, Alg. 1: area 2–20 % of the image, aspect ratio e^U(−1.2, 1.2)); the other
    half are frames along the image edge, 1–3 px wide with a 0–1 px margin — the shape of a border
    patch (``patchbench.defensive``). The fill is uniform noise, a random constant, or smooth noise
    (a bilinearly upsampled ``s×s`` grid, ``s`` in 2–7, one ``s`` per call), a third of the stickers each.

    Args:
        x: ``N×C×H×W`` images in [0, 1]. generator: the CPU generator all draws come from.
        p: chance that an image gets a sticker (0 = identity). return_mask: also return the
            ``N×1×H×W`` 0/1 sticker masks.

    Returns:
        The augmented images (pixels outside each mask are bit-identical to ``x``), and the masks when
        ``return_mask``.
    """
    p = check_number(p, "random_stickers: p (a chance)", 0.0, 1.0)
    _check_batch(x, "random_stickers: x")
    n, c, h, w = x.shape
    dev = x.device

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    on = torch.rand(n, generator=generator) < float(p)
    frame = torch.rand(n, generator=generator) < 0.5
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)

    def inside(k):                                    # k: N margins -> N×H×W "at least k from the edge"
        k = k.view(n, 1, 1)
        return (rows >= k) & (rows < h - k) & (cols >= k) & (cols < w - k)

    margin = torch.randint(0, 2, (n,), generator=generator)
    width = torch.randint(1, 4, (n,), generator=generator)
    m_frame = inside(margin) & ~inside(margin + width)
    area = u(0.02, 0.2) * h * w
    aspect = torch.exp(u(-1.2, 1.2))
    rh = (area * aspect).sqrt().round().clamp(1, h).long()
    rw = (area / aspect).sqrt().round().clamp(1, w).long()
    top = (u(0, 1) * (h - rh + 1)).long().clamp(max=h - 1)
    left = (u(0, 1) * (w - rw + 1)).long().clamp(max=w - 1)
    m_rect = ((rows >= top.view(n, 1, 1)) & (rows < (top + rh).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + rw).view(n, 1, 1)))
    mask = torch.where(frame.view(n, 1, 1), m_frame, m_rect) & on.view(n, 1, 1)
    kind = torch.randint(0, 3, (n,), generator=generator).view(n, 1, 1, 1)
    s = int(torch.randint(2, 8, (), generator=generator))
    smooth = F.interpolate(torch.rand(n, c, s, s, generator=generator), size=(h, w), mode="bilinear",
                           align_corners=False)
    fill = torch.where(kind == 0, torch.rand(n, c, h, w, generator=generator),
                       torch.where(kind == 1, torch.rand(n, c, 1, 1, generator=generator), smooth))
    mask = mask.unsqueeze(1).to(dev)
    out = torch.where(mask, fill.to(dev, x.dtype), x)
    return (out, mask.to(x.dtype)) if return_mask else out


def accuracy(model, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (eval mode, no gradients) on ``(x, y)``."""
    x = check_images(x, "x")
    y = check_labels(y, len(x), name="y")
    batch_size = check_positive_int(batch_size, "batch_size")
    pred = predict_batched(model, x, batch_size, reduce=lambda z: z.argmax(-1))
    return int((pred == y.to(pred.device)).sum()) / len(x)


def _fashion_mnist_data(root, train_limit: Optional[int], test_limit: Optional[int]):
    from ..data.fashion_mnist import load_fashion_mnist
    out = []
    for split, limit, name in (("train", train_limit, "train_limit"), ("test", test_limit, "test_limit")):
        try:
            out += load_fashion_mnist(split, root=root, limit=limit)
        except ValueError as e:
            if not str(e).startswith("limit:"):
                raise
            raise ValueError(f"{name}: {str(e)[len('limit: '):]}") from None
    return tuple(out)


def _check_args(arch, out_path, epochs, batch_size, lr, seed, resume, progress, checkpoint_path,
                weight_decay, augment, device, root, train_limit, test_limit, stickers, init) -> dict:
    """Every scalar argument of :func:`train_classifier`, checked before any data is read."""
    a = {"epochs": check_positive_int(epochs, "epochs"),
         "batch_size": check_positive_int(batch_size, "batch_size"),
         "lr": check_positive(lr, "lr"), "seed": check_seed(seed, "seed"),
         "weight_decay": check_nonnegative(weight_decay, "weight_decay"),
         "stickers": check_number(stickers, "stickers", 0.0, 1.0),
         "device": check_device(device, "device")}
    for name, v in (("resume", resume), ("progress", progress), ("augment", augment)):
        check_bool(v, name)
    for name, v in (("train_limit", train_limit), ("test_limit", test_limit)):
        if v is not None:
            check_positive_int(v, name)
    try:
        zoo.get_spec(arch)                              # LookupError listing the models
    except (LookupError, TypeError) as e:
        raise type(e)(f"arch: {e}") from None
    a["arch"] = arch
    a["out_path"] = check_path(out_path, "out_path", kind="file", must_exist=False)
    a["ckpt"] = check_path(checkpoint_path, "checkpoint_path", kind="file", must_exist=False) \
        if checkpoint_path is not None else a["out_path"].with_name(a["out_path"].name + ".ckpt")
    if a["ckpt"].resolve() == a["out_path"].resolve():
        raise ValueError(f"checkpoint_path: must differ from out_path ({str(a['out_path'])!r})")
    if root is not None:
        check_path(root, "root", kind="dir")
    if init is not None and not (isinstance(init, str) and init == "pretrained"):
        check_path(init, "init")
    return a


def _check_fits(model, arch: str, x_tr, y_tr, x_te, y_te) -> None:
    """The data's channels and labels must fit the model (else a cryptic shape error mid-training)."""
    for name, x in (("x_train", x_tr), ("x_test", x_te)):
        if x.shape[1] != model.channels:
            raise ValueError(f"{name}: {arch!r} takes {model.channels}-channel images, got "
                             f"{x.shape[1]} channels (shape {tuple(x.shape)})")
    for name, y in (("y_train", y_tr), ("y_test", y_te)):
        check_labels(y, len(y), model.num_classes, name=f"{name} (labels)")


def _check_data(data) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 4):
        raise TypeError("data: expected a tuple (x_train, y_train, x_test, y_test), got "
                        f"{type(data).__name__}")
    x_tr, y_tr, x_te, y_te = data
    x_tr, x_te = check_images(x_tr, "x_train"), check_images(x_te, "x_test")
    return x_tr, check_labels(y_tr, len(x_tr), name="y_train"), x_te, check_labels(y_te, len(x_te),
                                                                                  name="y_test")


def _diverged(epoch: int, lr: float, what: str) -> ValueError:
    return ValueError(f"training diverged at epoch {epoch}: {what}; nothing was saved for this "
                      f"epoch — try a lower lr (this run used lr={lr:g})")


def _check_finite_weights(model, epoch: int, lr: float) -> None:
    for name, t in model.net.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _diverged(epoch, lr, f"parameter {name!r} became NaN/Inf")


def _train_one_epoch(model, opt, sched, x, y, batch_size, gen, augment, stickers, bar, epoch: int = 0,
                     lr: float = float("nan")) -> Tuple[float, int]:
    model.train()
    dev = next(model.parameters()).device
    order = torch.randperm(len(x), generator=gen)
    total, steps = 0.0, 0
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        if augment:
            xb = random_shift_flip(xb, gen)
        if stickers > 0:
            xb = random_stickers(xb, gen, stickers)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise _diverged(epoch, lr, f"the loss became {value} at step {steps + 1} of the epoch")
        total, steps = total + value, steps + 1
        bar.update(1)
        if steps % 20 == 0:
            bar.set_postfix(loss=f"{total / steps:.4f}", refresh=False)
    return total / max(steps, 1), steps


def train_classifier(arch: str, out_path, epochs: int = 10, batch_size: int = 128, lr: float = 3e-3,
                     seed: int = 0, resume: bool = True, progress: bool = True, *,
                     checkpoint_path=None, weight_decay: float = 5e-4, augment: bool = True,
                     device="cpu", root=None, data=None, train_limit: Optional[int] = None,
                     test_limit: Optional[int] = None, stickers: float = 0.0, init=None) -> float:
    """Train ``arch`` on Fashion-MNIST (from scratch unless ``init``) and return its test accuracy.

    Args:
        arch: a registered model name (``"fmnist_cnn_small"``, ``"fmnist_cnn_wide"``, ``"tiny_cnn"``).
        out_path: where the final weights (float32 ``state_dict`` of the raw network) are written.
        epochs: total epochs (default 10). batch_size: default 128. lr: peak one-cycle LR (3e-3).
        seed: seeds the initialisation, shuffling, augmentation and dropout (default 0).
        resume: continue from ``checkpoint_path`` when it exists (default True); its config must match.
        progress: tqdm progress bars (default True).
        checkpoint_path: full training state, rewritten every epoch (default ``<out_path>.ckpt``).
        weight_decay: AdamW decoupled weight decay (default 5e-4). augment: shift+flip (default True).
        device: training device (default ``"cpu"``). root: Fashion-MNIST folder (default: system).
        data: ``(x_train, y_train, x_test, y_test)`` to train on instead of Fashion-MNIST.
        train_limit, test_limit: use only the first N images of each split (default all).
        stickers: chance per training image of a random sticker (:func:`random_stickers`; default 0).
        init: start from these weights instead of a random initialisation: ``"pretrained"`` (the
            registered weights of ``arch``) or a weights file (default None: from scratch).

    Returns:
        Top-1 accuracy on the test images.
    """
    a = _check_args(arch, out_path, epochs, batch_size, lr, seed, resume, progress, checkpoint_path,
                    weight_decay, augment, device, root, train_limit, test_limit, stickers, init)
    arch, out_path, ckpt, epochs, batch_size, lr, seed = (a[k] for k in (
        "arch", "out_path", "ckpt", "epochs", "batch_size", "lr", "seed"))
    weight_decay, stickers, device = a["weight_decay"], a["stickers"], a["device"]
    x_tr, y_tr, x_te, y_te = _check_data(data if data is not None
                                         else _fashion_mnist_data(root, train_limit, test_limit))
    config = {"arch": arch, "epochs": epochs, "batch_size": batch_size, "lr": float(lr), "seed": int(seed),
              "weight_decay": float(weight_decay), "augment": bool(augment), "n_train": len(x_tr)}
    if stickers:
        config["stickers"] = float(stickers)
    if init is not None:
        config["init"] = str(init)
    spec = zoo.get_spec(arch)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    channels = {"channels": x_tr.shape[1]} if arch == "tiny_cnn" else {}
    model = zoo.load(arch, weights=False, device=device, seed=seed, **channels).train()
    _check_fits(model, arch, x_tr, y_tr, x_te, y_te)
    if init is not None:
        _load_init(model, arch, init, device)
    opt = torch.optim.AdamW(model.net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(x_tr) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start, step, history = 0, 0, []
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched, generators={"data": gen},
                                map_location=device)
        if state["config"] != config:
            raise ValueError(f"{ckpt}: checkpoint was made with config {state['config']}, this run asks "
                             f"for {config}; pass resume=False or another checkpoint_path")
        start, step, history = state["epoch"], state["step"], list(state["extra"].get("history", []))
    for epoch in range(start, epochs):
        with tqdm(total=steps_per_epoch, desc=f"{spec.name} epoch {epoch + 1}/{epochs}",
                  disable=not progress, leave=False) as bar, trusted_inputs():
            loss, n = _train_one_epoch(model, opt, sched, x_tr, y_tr, batch_size, gen, augment,
                                       float(stickers), bar, epoch=epoch + 1, lr=lr)
        _check_finite_weights(model, epoch + 1, lr)
        step += n
        history.append(loss)
        save_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched, epoch=epoch + 1, step=step,
                        config=config, generators={"data": gen}, extra={"history": history})
        if progress:
            tqdm.write(f"{spec.name} epoch {epoch + 1}/{epochs}: train loss {loss:.4f}")
    save_weights(model.net, out_path)
    return accuracy(model, x_te, y_te)


def _load_init(model, arch: str, init, device) -> None:
    """Copy the starting weights ``init`` ("pretrained" or a weights file) into ``model.net``."""
    if str(init) == "pretrained":
        if not zoo.get_spec(arch).pretrained_required:
            raise ValueError(f"init='pretrained': {arch!r} has no registered weights; pass a weights file")
        state = zoo.load(arch, device=device).net.state_dict()
    else:
        path = Path(init)
        if not path.is_file():
            raise FileNotFoundError(f"init: weights file {path} does not exist (or pass 'pretrained')")
        state = load_file(path, "init", map_location=device)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]          # a training checkpoint: its model weights
        if not isinstance(state, dict):
            raise ValueError(f"init: {path} holds a {type(state).__name__}, not a state dict")
    load_state_dict_checked(model.net, state, f"init: {init}", f"{arch!r}")


def main_train_classifier(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``patchbench train classifier --arch NAME --out FILE [--epochs N] ...``."""
    from ..cli import (ArgumentParser, chance_arg, device_arg, out_file_arg, positive_float_arg,
                       positive_int_arg, seed_arg, threads_arg)
    p = ArgumentParser(prog="patchbench train classifier",
                       description="Train a small classifier on Fashion-MNIST (resumable).")
    p.add_argument("--arch", required=True,
                   help="a registered model: fmnist_cnn_small | fmnist_cnn_wide | fmnist_resnet | tiny_cnn")
    p.add_argument("--out", required=True, type=out_file_arg,
                   help="weights file to write (float32 state_dict)")
    p.add_argument("--epochs", type=positive_int_arg, default=10)
    p.add_argument("--batch-size", type=positive_int_arg, default=128)
    p.add_argument("--lr", type=positive_float_arg, default=3e-3)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--checkpoint", default=None, type=out_file_arg,
                   help="training state file (default OUT.ckpt)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="cpu", type=device_arg)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder with the idx .gz files")
    p.add_argument("--threads", type=threads_arg, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--stickers", type=chance_arg, default=0.0,
                   help="chance per training image of a random sticker (default 0)")
    p.add_argument("--init", default=None,
                   help="start from 'pretrained' (the registered weights) or a weights file")
    a = p.parse_args(argv)
    try:
        zoo.get_spec(a.arch)
    except LookupError as e:
        p.error(f"argument --arch: {e}")
    if a.threads:
        torch.set_num_threads(a.threads)
    acc = train_classifier(a.arch, a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                           resume=not a.no_resume, progress=not a.no_progress, checkpoint_path=a.checkpoint,
                           device=a.device, root=a.data_root, stickers=a.stickers, init=a.init)
    print(f"{a.arch}: test accuracy {acc:.4f} -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_train_classifier())
