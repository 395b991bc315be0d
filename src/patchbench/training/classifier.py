"""Train a registered small classifier on Fashion-MNIST, resumably.

Recipe: AdamW (Loshchilov & Hutter, ICLR 2019) with a one-cycle learning-rate schedule (Smith &
Topin 2019, Sec. 3) over all steps, cross-entropy loss, and light augmentation — a random shift of up
to ±2 px (zero padding, the background colour) and a horizontal flip with p = 0.5, the standard
Fashion-MNIST augmentations. A full checkpoint (model, optimiser, scheduler, all RNG states,
config) is written atomically after every epoch; with ``resume=True`` a rerun continues from the last
finished epoch and draws the same random numbers as an uninterrupted run. At the end the weights
alone (float32 ``state_dict`` of the raw network) go to ``out_path``; ``patchbench.models.load(arch,
weights=out_path)`` reads them.

Example::

    acc = train_classifier("fmnist_cnn_small", "runs/small.pt", epochs=10, seed=0)
    model = patchbench.models.load("fmnist_cnn_small", weights="runs/small.pt")
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .._validation import check_images, check_labels, check_positive_int
from ..models import zoo
from .checkpoint import load_checkpoint, save_checkpoint, save_weights


def random_shift_flip(x: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Shift each image by up to ``max_shift`` px (zero fill) and flip half of them horizontally."""
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


@torch.no_grad()
def accuracy(model, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``(x, y)``."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size].to(dev)).argmax(-1).cpu() == y[i:i + batch_size]).sum())
    model.train(was)
    return correct / len(x)


def _fashion_mnist_data(root, train_limit: Optional[int], test_limit: Optional[int]):
    from ..data.fashion_mnist import load_fashion_mnist
    x_tr, y_tr = load_fashion_mnist("train", root=root, limit=train_limit)
    x_te, y_te = load_fashion_mnist("test", root=root, limit=test_limit)
    return x_tr, y_tr, x_te, y_te


def _check_data(data) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 4):
        raise TypeError("data: expected a tuple (x_train, y_train, x_test, y_test), got "
                        f"{type(data).__name__}")
    x_tr, y_tr, x_te, y_te = data
    x_tr, x_te = check_images(x_tr, "x_train"), check_images(x_te, "x_test")
    return x_tr, check_labels(y_tr, len(x_tr), name="y_train"), x_te, check_labels(y_te, len(x_te),
                                                                                  name="y_test")


def _train_one_epoch(model, opt, sched, x, y, batch_size, gen, augment, bar) -> Tuple[float, int]:
    model.train()
    dev = next(model.parameters()).device
    order = torch.randperm(len(x), generator=gen)
    total, steps = 0.0, 0
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        if augment:
            xb = random_shift_flip(xb, gen)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total, steps = total + float(loss.detach()), steps + 1
        bar.update(1)
        if steps % 20 == 0:
            bar.set_postfix(loss=f"{total / steps:.4f}", refresh=False)
    return total / max(steps, 1), steps


def train_classifier(arch: str, out_path, epochs: int = 10, batch_size: int = 128, lr: float = 3e-3,
                     seed: int = 0, resume: bool = True, progress: bool = True, *,
                     checkpoint_path=None, weight_decay: float = 5e-4, augment: bool = True,
                     device="cpu", root=None, data=None, train_limit: Optional[int] = None,
                     test_limit: Optional[int] = None) -> float:
    """Train ``arch`` from scratch on Fashion-MNIST and return its test accuracy.

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

    Returns:
        Top-1 accuracy on the test images.
    """
    epochs, batch_size = check_positive_int(epochs, "epochs"), check_positive_int(batch_size, "batch_size")
    out_path = Path(out_path)
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else out_path.with_name(out_path.name + ".ckpt")
    x_tr, y_tr, x_te, y_te = _check_data(data if data is not None
                                         else _fashion_mnist_data(root, train_limit, test_limit))
    config = {"arch": arch, "epochs": epochs, "batch_size": batch_size, "lr": float(lr), "seed": int(seed),
              "weight_decay": float(weight_decay), "augment": bool(augment), "n_train": len(x_tr)}
    spec = zoo.get_spec(arch)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    channels = {"channels": x_tr.shape[1]} if arch == "tiny_cnn" else {}
    model = zoo.load(arch, weights=False, device=device, seed=seed, **channels).train()
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
                  disable=not progress, leave=False) as bar:
            loss, n = _train_one_epoch(model, opt, sched, x_tr, y_tr, batch_size, gen, augment, bar)
        step += n
        history.append(loss)
        save_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched, epoch=epoch + 1, step=step,
                        config=config, generators={"data": gen}, extra={"history": history})
        if progress:
            tqdm.write(f"{spec.name} epoch {epoch + 1}/{epochs}: train loss {loss:.4f}")
    save_weights(model.net, out_path)
    return accuracy(model, x_te, y_te)


def main_train_classifier(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``patchbench train classifier --arch NAME --out FILE [--epochs N] ...``."""
    p = argparse.ArgumentParser(prog="patchbench train classifier",
                                description="Train a small classifier on Fashion-MNIST (resumable).")
    p.add_argument("--arch", required=True, help="fmnist_cnn_small | fmnist_cnn_wide | tiny_cnn")
    p.add_argument("--out", required=True, help="weights file to write (float32 state_dict)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="training state file (default OUT.ckpt)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder with the idx .gz files")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    acc = train_classifier(a.arch, a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                           resume=not a.no_resume, progress=not a.no_progress, checkpoint_path=a.checkpoint,
                           device=a.device, root=a.data_root)
    print(f"{a.arch}: test accuracy {acc:.4f} -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_train_classifier())
