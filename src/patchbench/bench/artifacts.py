"""The artifacts an experiment needs, by kind: how each kind's ``config`` is checked when the file
loads, and how the artifact is trained (once) from it.

An ``[artifacts.NAME]`` table gives a ``kind`` and either a ``source`` (``asset:FILE``, a shipped
file, or ``file:PATH``) or a ``config``: the trainer's settings. A trained artifact lives in
``$PATCHBENCH_HOME/artifacts/<kind>/<hash of kind and config>/`` with its config recorded next to
it (``artifact.json``) and a ``DONE`` marker naming its file, so it is trained once, read back
afterwards, and never mistaken for another config's. Trainers resume from their own checkpoints in
that folder, so a killed build continues.

Kinds:

* ``patchzero``: a PatchZero detector (:class:`patchbench.training.patchzero.PatchZeroTrainConfig`).
* ``classifier``: a classifier (:func:`patchbench.training.classifier.train_classifier` keywords).
* ``face-patch``: a universal face-hiding patch (:class:`patchbench.attacks.face.FacePatch`
  options, plus ``n_train``, ``size``, ``seed``: it is trained on ``n_train`` composites of the
  *train* face identities, ``size``×``size`` px, against MTCNN).
* ``defensive-patch``: a defensive patch
  (:class:`patchbench.defensive.train.DefensivePatchConfig` fields).
* ``sac``: a SAC patch segmenter (:class:`patchbench.training.sac.SACTrainConfig`).
* retrieval (:mod:`.artifacts_retrieval`): ``hasher`` (a CSQ hasher), ``pair`` (PAIR's generator,
  ``stage = "pair" | "mae"``: the MAE of its first stage is MAEDefense's), ``patchzero-images`` and
  ``sac-images`` (detectors trained on a registered image dataset).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Tuple

from .._io import atomic_save, atomic_write_text, cache_root, config_fingerprint, file_fingerprint


@dataclass(frozen=True)
class ArtifactKind:
    """``check(config)`` raises for a config the trainer would refuse (at load time);
    ``build(config, folder, log)`` trains into ``folder`` and returns the artifact's file."""

    name: str
    check: Callable[[dict], None]
    build: Callable[[dict, Path, Callable], Path]


# ---- patchzero ---------------------------------------------------------------------------------
def _check_patchzero(cfg: dict) -> None:
    from .._config import config_from_mapping
    from ..training.patchzero import PatchZeroTrainConfig
    config_from_mapping(PatchZeroTrainConfig, cfg, "config")


def _build_patchzero(cfg: dict, folder: Path, log: Callable) -> Path:
    from .._config import config_from_mapping
    from ..training.patchzero import PatchZeroTrainConfig, train_patchzero
    return Path(train_patchzero(config_from_mapping(PatchZeroTrainConfig, cfg, "config"), folder,
                                resume=True))


# ---- classifier --------------------------------------------------------------------------------
def _check_classifier(cfg: dict) -> None:
    from .._registry import check_keywords
    from ..training.classifier import train_classifier
    if "arch" not in cfg:
        raise ValueError("arch: missing (the classifier's registered architecture)")
    check_keywords(train_classifier, {k: v for k, v in cfg.items() if k != "out_path"},
                   "classifier config")


def _build_classifier(cfg: dict, folder: Path, log: Callable) -> Path:
    from ..training.classifier import train_classifier
    path = folder / "model.pt"
    train_classifier(out_path=path, **cfg)
    return path


# ---- face-patch --------------------------------------------------------------------------------
_FACE_DATA_KEYS = ("n_train", "size", "seed")


def _face_attack(cfg: dict):
    from ..attacks.face import FacePatch
    from .._registry import check_keywords
    opts = {k: v for k, v in cfg.items() if k not in _FACE_DATA_KEYS}
    if "patch" in opts:
        raise ValueError("patch: a face-patch artifact is trained, it does not start from a file")
    check_keywords(FacePatch, opts, "face-patch config")
    return FacePatch(**opts)


def _face_data(cfg: dict):
    from .._validation import check_int, check_positive_int, check_seed
    n = check_positive_int(cfg.get("n_train", 32), "n_train")
    size = check_int(cfg.get("size", 192), "size", 24)
    return n, size, check_seed(cfg.get("seed", 0), "seed")


def _check_face_patch(cfg: dict) -> None:
    fp = _face_attack(cfg)
    _, size, _ = _face_data(cfg)
    if fp.patch_size > size:
        raise ValueError(f"patch_size: the patch ({fp.patch_size} px) is larger than the composites "
                         f"(size {size})")


def _build_face_patch(cfg: dict, folder: Path, log: Callable) -> Path:
    """Train the patch on the train identities' composites (:func:`patchbench.data.faces.
    composite_faces`, ``generator=seed``) against MTCNN, resumable from ``patch.ckpt``."""
    from ..data.faces import composite_faces
    from ..models.mtcnn import load_mtcnn
    from ..training.face_patch import scale_range
    fp = _face_attack(cfg)
    n, size, seed = _face_data(cfg)
    train = composite_faces(n, size=(size, size), scale_range=scale_range(size), split="train",
                            generator=seed)
    t0 = time.perf_counter()
    patch = fp.fit(load_mtcnn(), train.images, train.boxes, generator=seed,
                   checkpoint=folder / "patch.ckpt", verbose=True)
    path = folder / "patch.pt"
    atomic_save({"patch": patch.cpu(), "config": fp.config(), "history": list(fp.history_),
                 "seconds": time.perf_counter() - t0}, path)
    return path


# ---- defensive-patch ---------------------------------------------------------------------------
def _defensive_config(cfg: dict):
    from .._config import config_from_mapping
    from ..defensive.train import DefensivePatchConfig
    return config_from_mapping(DefensivePatchConfig, cfg, "config")


def _build_defensive_patch(cfg: dict, folder: Path, log: Callable) -> Path:
    from ..defensive.train import train_defensive_patch
    train_defensive_patch(_defensive_config(cfg), folder, resume=True, progress=True)
    return folder / "defensive_patch.pt"


# ---- sac ---------------------------------------------------------------------------------------
def _sac_config(cfg: dict):
    from .._config import config_from_mapping
    from ..training.sac import SACTrainConfig
    return config_from_mapping(SACTrainConfig, cfg, "config")


def _build_sac(cfg: dict, folder: Path, log: Callable) -> Path:
    from ..training.sac import train_sac
    return Path(train_sac(_sac_config(cfg), folder, resume=True))


KINDS: Dict[str, ArtifactKind] = {k.name: k for k in (
    ArtifactKind("patchzero", _check_patchzero, _build_patchzero),
    ArtifactKind("classifier", _check_classifier, _build_classifier),
    ArtifactKind("face-patch", _check_face_patch, _build_face_patch),
    ArtifactKind("defensive-patch", lambda cfg: _defensive_config(cfg) and None,
                 _build_defensive_patch),
    ArtifactKind("sac", lambda cfg: _sac_config(cfg) and None, _build_sac),
)}
from .artifacts_retrieval import retrieval_kinds  # noqa: E402  (kinds of the retrieval task)
KINDS.update(retrieval_kinds())


def check_config(kind: str, cfg: dict) -> None:
    """Raise what the trainer of ``kind`` would raise for ``cfg`` (before anything runs)."""
    KINDS[kind].check(cfg)


def artifact_path(spec, log: Callable = print) -> Path:
    """The file of an artifact: a shipped asset, a user file, or trained once into
    ``$PATCHBENCH_HOME/artifacts/<kind>/<hash of its config>/`` and read from there afterwards."""
    if spec.source is not None:
        if spec.source.startswith("asset:"):
            from importlib import resources
            return Path(str(resources.files("patchbench").joinpath("assets", spec.source[6:])))
        return Path(spec.source[5:]).expanduser()
    ident = {"kind": spec.kind, "config": spec.config}
    folder = cache_root("artifacts", spec.kind, config_fingerprint(ident))
    meta = folder / "artifact.json"
    if meta.is_file():
        try:
            recorded = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if recorded != ident:
            raise ValueError(f"artifacts.{spec.name}: the cache {folder} holds an artifact whose config "
                             f"no longer matches this one ({recorded!r} vs {ident!r}); delete that "
                             f"folder to retrain it")
        done = folder / "DONE"
        if done.is_file():
            return folder / done.read_text(encoding="utf-8").strip()
    if spec.kind not in KINDS:  # the config loader refuses other kinds
        raise LookupError(f"artifacts.{spec.name}.kind: unknown kind {spec.kind!r}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta, json.dumps(ident, sort_keys=True))
    log(f"artifact {spec.name}: training a {spec.kind} into {folder} (resumable)")
    path = KINDS[spec.kind].build(dict(spec.config), folder, log)
    atomic_write_text(folder / "DONE", path.name)
    return path


def build_artifacts(exp, names, log: Callable = print) -> Dict[str, Tuple[str, str]]:
    """``name -> (path, fingerprint)`` of the artifacts ``names``, in the file's order."""
    out = {}
    for name, spec in exp.artifacts.items():
        if name in names:
            p = artifact_path(spec, log)
            out[name] = (str(p), file_fingerprint(p))
    return out


__all__ = ["KINDS", "ArtifactKind", "artifact_path", "build_artifacts", "check_config"]
