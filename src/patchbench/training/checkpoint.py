"""Atomic, resumable training checkpoints.

A checkpoint is one ``torch.save`` file holding ``{model, optimizer, scheduler, epoch, step, rng,
config, extra}``. It is written to a temporary file in the same folder and moved into place with
``os.replace`` (atomic on POSIX and Windows; :func:`patchbench._io.atomic_save`), so a run killed
mid-write never leaves a truncated checkpoint: the previous one stays valid. Everything stored is
loadable with ``torch.load(weights_only=True)`` (tensors and plain Python values only).

Loading fails with a ``ValueError`` naming the file for anything that is not such a checkpoint —
garbage or truncated files, damaged bytes (zip CRC), NaN/Inf in the model's tensors, or a model
state for another architecture (the message lists mismatching keys with expected vs found shapes) —
and with ``FileNotFoundError`` for a missing file.

``rng`` holds the global torch CPU (and CUDA) generator states, Python's ``random`` and numpy's global
states, plus any named ``torch.Generator`` the trainer uses (e.g. the data-shuffling one), so a resumed
run draws the same random numbers as an uninterrupted one.

Example::

    save_checkpoint("run/last.ckpt", model=net, optimizer=opt, epoch=3, step=1407, config=cfg)
    state = load_checkpoint("run/last.ckpt", model=net, optimizer=opt)   # state["epoch"] == 3
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn

from .._io import atomic_save  # noqa: F401 - the one home of atomic writes; importable from here too
from .._validation import check_int

CHECKPOINT_VERSION = 1


def _check_module(module, name: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name}: expected a torch.nn.Module, got {type(module).__name__}")
    return module


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def save_weights(module: nn.Module, path) -> Path:
    """Save only ``module``'s ``state_dict`` (float tensors as float32, on CPU), atomically."""
    _check_module(module, "module")
    sd = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu())
          for k, v in module.state_dict().items()}
    return atomic_save(sd, path)


def rng_state(generators: Optional[Mapping[str, torch.Generator]] = None) -> dict:
    """Snapshot of every random number generator a training loop may touch."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached": float(np_state[4]), "state": torch.from_numpy(np_state[1].astype(np.int64))},
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, generators: Optional[Mapping[str, torch.Generator]] = None) -> None:
    """Inverse of :func:`rng_state`. Named generators missing from ``state`` raise ``KeyError``."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in (generators or {}).items():
        if k not in state["generators"]:
            raise KeyError(f"checkpoint has no state for generator {k!r}; it has "
                           f"{sorted(state['generators'])}")
        g.set_state(state["generators"][k])


def save_checkpoint(path, *, model: nn.Module, epoch: int, step: int, config: Mapping,
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler=None,
                    generators: Optional[Mapping[str, torch.Generator]] = None,
                    extra: Optional[Mapping] = None) -> Path:
    """Write a full training checkpoint atomically.

    Args:
        path: destination file.
        model: the module being trained (its ``state_dict``).
        epoch: number of *finished* epochs.
        step: number of finished optimiser steps.
        config: the run's hyper-parameters (plain Python values); checked on resume.
        optimizer, scheduler: saved when given (default ``None``).
        generators: named ``torch.Generator`` objects to snapshot (default ``None``).
        extra: anything else (plain values / tensors), e.g. per-epoch metrics (default ``None``).
    """
    _check_module(model, "model")
    epoch, step = check_int(epoch, "epoch", minimum=0), check_int(step, "step", minimum=0)
    for value, name in ((config, "config"), (extra, "extra")):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{name}: expected a dict, got {type(value).__name__}")
    if config is None:
        raise TypeError("config: expected a dict, got None")
    obj = {
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "rng": rng_state(generators),
        "config": dict(config),
        "extra": dict(extra or {}),
    }
    return atomic_save(obj, path)


def load_checkpoint(path, *, model: Optional[nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler=None,
                    generators: Optional[Mapping[str, torch.Generator]] = None,
                    restore_rng: bool = True, map_location="cpu") -> Dict:
    """Read a checkpoint written by :func:`save_checkpoint` and restore what is passed in.

    Returns the raw dictionary (``epoch``, ``step``, ``config``, ``extra``, ...). A file that is not
    such a checkpoint (garbage, truncated, damaged, NaN/Inf weights, another architecture, optimizer
    or scheduler state that does not fit) raises ``ValueError`` naming it; a missing file
    ``FileNotFoundError``.
    """
    from ..models.weights import check_finite, check_state_dict, load_file

    if model is not None:
        _check_module(model, "model")
    obj = load_file(path, "checkpoint", map_location=map_location)
    path = Path(os.path.expanduser(os.fspath(path)))
    if not isinstance(obj, dict) or obj.get("version") != CHECKPOINT_VERSION or \
            not isinstance(obj.get("model"), Mapping):
        raise ValueError(f"{path}: not a patchbench training checkpoint (version "
                         f"{CHECKPOINT_VERSION} with a 'model' entry)")
    state = obj["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{path}: its 'model' entry is not a state_dict (name → tensor)")
    check_finite(state, path)
    if model is not None:
        check_state_dict(state, model, path, what=f"the {type(model).__name__} being trained")
        model.load_state_dict(state)
    for part, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is not None and obj.get(part) is not None:
            try:
                target.load_state_dict(obj[part])
            except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
                raise ValueError(f"{path}: its {part} state does not fit this {part} "
                                 f"({type(e).__name__}: {_first_line(e)}); was it saved by another "
                                 f"run configuration?") from e
    if restore_rng:
        if not isinstance(obj.get("rng"), dict):
            raise ValueError(f"{path}: the checkpoint has no random-number-generator state")
        try:
            restore_rng_state(obj["rng"], generators)
        except KeyError as e:
            raise LookupError(f"{path}: {e.args[0] if e.args else e}") from e
        except (TypeError, ValueError, RuntimeError, IndexError) as e:
            raise ValueError(f"{path}: its random-number-generator state is damaged "
                             f"({type(e).__name__}: {_first_line(e)})") from e
    return obj


def check_run_settings(config, prefix: str) -> None:
    """Check (and normalise in place) the fields every trainer config shares: ``seed``, ``device``,
    ``num_threads`` (None or an int >= 1) and ``progress``; errors name ``prefix + field``."""
    from .._validation import check_bool, check_device, check_positive_int, check_seed
    config.seed = check_seed(config.seed, prefix + "seed")
    check_device(config.device, prefix + "device")
    if config.num_threads is not None:
        config.num_threads = check_positive_int(config.num_threads, prefix + "num_threads")
    config.progress = check_bool(config.progress, prefix + "progress")
