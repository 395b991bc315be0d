"""One home each for the small I/O pieces every area needs: atomic file writes, the cache root, weight
and file fingerprints, and batched prediction.

* Atomic writes go through a temporary file in the same folder, ``fsync`` and ``os.replace`` (atomic on
  POSIX and Windows): a run killed mid-write never leaves a truncated file.
* The cache root is ``$PATCHBENCH_HOME`` (default ``~/.cache/patchbench``); trained artifacts, downloaded
  weights and experiment caches live under it.
* Fingerprints are short sha256 digests: of a model's weights (``state_dict`` in key order) or of a file.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

PathLike = Union[str, "os.PathLike[str]"]


def _atomic_write(path: PathLike, write: Callable, binary: bool) -> Path:
    from ._validation import check_path
    path = check_path(path, "path", kind="file", must_exist=False).expanduser()
    check_path(path, "path", kind="file", must_exist=False)   # "~/dir" is a directory too
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8",
                                                                            "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    return _atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    return _atomic_write(path, lambda f: f.write(data), binary=True)


def atomic_save(obj, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns the path."""
    return _atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def cache_root(*parts: str) -> Path:
    """``$PATCHBENCH_HOME/<parts...>`` (default ``~/.cache/patchbench/<parts...>``); not created."""
    home = os.environ.get("PATCHBENCH_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "patchbench"
    return base.joinpath(*parts)


def weights_fingerprint(model: nn.Module, length: int = 16) -> str:
    """Short sha256 of a module's weights (every ``state_dict`` entry, in key order): a cached result
    is reused only for the same weights."""
    # the same digest the presets recorded before this module existed (shipped patches carry it)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


def file_fingerprint(path: PathLike, length: Optional[int] = 16) -> str:
    """Short sha256 of a file's bytes (read in 1 MiB chunks); ``length=None``: the full hex digest."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def config_fingerprint(config, length: int = 20) -> str:
    """Short sha256 of a JSON-able config (keys sorted): the key of a cell or an artifact."""
    import json
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@torch.no_grad()
def predict_batched(model: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 256,
                    reduce: Optional[Callable[[Tensor], Union[Tensor, Tuple[Tensor, ...]]]] = None
                    ) -> Union[Tensor, Tuple[Tensor, ...]]:
    """``model`` on ``x`` in eval mode without gradients, ``batch_size`` images at a time, outputs
    concatenated (``reduce``, e.g. ``lambda z: z.argmax(-1)``, is applied per batch; it may return a
    tuple of tensors, concatenated one by one). Batches move to the model's device and results come
    back to ``x``'s; the training flag is restored afterwards. An empty ``x`` runs ``model`` once
    (so it can still refuse a bad shape) and gives empty outputs.

    Inner helper: ``x`` and ``batch_size`` are not validated (public callers check them first).
    """
    is_module = isinstance(model, nn.Module)
    was_training = is_module and model.training
    if is_module:
        model.eval()
    param = next(model.parameters(), None) if is_module else None
    dev = param.device if param is not None else x.device
    def run(xb: Tensor):
        z = model(xb.to(dev))
        z = reduce(z) if reduce is not None else z
        return tuple(t.to(x.device) for t in z) if isinstance(z, tuple) else z.to(x.device)

    try:
        outs = [run(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        if not outs:
            return run(x)
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)
    finally:
        if is_module:
            model.train(was_training)
