"""Artifact kinds of the retrieval experiments (PAIR, ACM MM 2024, Tables 2–3): how each one's
``config`` is checked when the file loads and how it is trained, once, by the harness
(:mod:`patchbench.bench.artifacts`: the same cache folders, ``artifact.json`` and ``DONE`` marker).

* ``hasher``: a CSQ hasher (:class:`patchbench.training.hasher.HasherTrainConfig` fields;
  ``patchbench train hasher``) → ``hasher.pt``, a model entry's ``weights = "@NAME"``.
* ``pair``: PAIR's generator (:class:`patchbench.training.pair.PairTrainConfig` fields) plus
  ``stage = "pair"`` (default: ``pair_final.pt``, MAE pretraining then PAIR's loss, §4.2) or
  ``"mae"`` (``mae_pretrained.pt``: the stage-1 masked autoencoder without the semantic
  discriminator — MAEDefense's model, and Table 3's rows without D). Both stages of one trainer
  config train once, in a run folder shared by the two kinds of artifact
  (``$PATCHBENCH_HOME/artifacts/pair-run/<hash of the run's identity and pretraining epochs>/``,
  resumed by whichever is built second); each artifact copies its file into its own folder.
* ``patchzero-images`` / ``sac-images``: a PatchZero (Xu et al. WACV 2023) / SAC (Liu et al. CVPR
  2022) detector trained on the images of a registered dataset — e.g. the 64-px ``fmnist-objects``
  of the retrieval experiment — instead of Fashion-MNIST: the trainer's fields
  (:class:`~patchbench.training.patchzero.PatchZeroTrainConfig` /
  :class:`~patchbench.training.sac.SACTrainConfig`, without ``dataset`` and ``image_size``) plus
  ``images = {name = "fmnist-objects", split = "train", offset = 0, size = 64, seed = 0}``. The
  first ``n_train`` images of that split are written once as PNG (lossless: the sets are 8-bit) to
  ``<artifact folder>/images/`` and the trainer reads that folder at ``image_size = size``. Its
  downstream ``classifier`` (a 3-channel zoo classifier such as the ImageNet ``mobilenet_v2``, the
  backbone of our CSQ hasher) makes the stage-1 patches: the trainers attack classifiers, so the
  detector learns patches made against the hasher's backbone, not against the hasher itself.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict

from .._io import cache_root, config_fingerprint

PAIR_STAGES = {"pair": "pair_final.pt", "mae": "mae_pretrained.pt"}
_IMAGE_KEYS = ("name", "split", "offset", "size", "seed")


# ---- hasher -------------------------------------------------------------------------------------
def _hasher_config(cfg: dict):
    from .._config import config_from_mapping
    from ..training.hasher import HasherTrainConfig
    return config_from_mapping(HasherTrainConfig, cfg, "config")


def _build_hasher(cfg: dict, folder: Path, log: Callable) -> Path:
    from ..training.hasher import train_hasher
    return Path(train_hasher(_hasher_config(cfg), folder, resume=True))


# ---- pair / mae ---------------------------------------------------------------------------------
def _pair_config(cfg: dict):
    from .._config import config_from_mapping
    from ..training.pair import PairTrainConfig
    stage = cfg.get("stage", "pair")
    if stage not in PAIR_STAGES:
        raise ValueError(f"stage: expected one of {', '.join(PAIR_STAGES)}, got {stage!r}")
    return stage, config_from_mapping(PairTrainConfig, {k: v for k, v in cfg.items()
                                                        if k != "stage"}, "config")


def pair_run_folder(train_cfg) -> Path:
    """The run folder both stages of one PAIR trainer config share."""
    ident = {"identity": train_cfg.identity(), "pretrain_epochs": train_cfg.pretrain_epochs}
    return cache_root("artifacts", "pair-run", config_fingerprint(ident))


def _build_pair(cfg: dict, folder: Path, log: Callable) -> Path:
    import dataclasses

    from ..training.pair import train_pair
    stage, train_cfg = _pair_config(cfg)
    run = pair_run_folder(train_cfg)
    if stage == "mae":                 # stage 1 only; a later "pair" artifact resumes from it
        train_cfg = dataclasses.replace(train_cfg, epochs=0)
    log(f"  PAIR run folder (shared by its pair and mae artifacts): {run}")
    src = Path(train_pair(train_cfg, run, resume=True))
    if src.name != PAIR_STAGES[stage]:
        src = run / PAIR_STAGES[stage]
    dst = folder / PAIR_STAGES[stage]
    shutil.copy2(src, dst)
    return dst


# ---- detectors on a registered dataset's images ------------------------------------------------
def _images_spec(cfg: dict) -> dict:
    from .._validation import check_int, check_seed
    from ..data import dataset_info
    spec = cfg.get("images")
    if not isinstance(spec, dict):
        raise TypeError("images: expected a table {name = DATASET, split, offset, size, seed}")
    unknown = sorted(set(spec) - set(_IMAGE_KEYS))
    if unknown:
        raise ValueError(f"images: unknown keys {unknown}; known keys: {', '.join(_IMAGE_KEYS)}")
    if "name" not in spec:
        raise ValueError("images.name: missing (a registered dataset, e.g. 'fmnist-objects')")
    out = {"name": spec["name"], "split": spec.get("split", "train"),
           "offset": check_int(spec.get("offset", 0), "images.offset", 0),
           "size": check_int(spec.get("size", 64), "images.size", 8),
           "seed": check_seed(spec.get("seed", 0), "images.seed")}
    info = dataset_info(out["name"], size=out["size"], seed=out["seed"])
    if out["split"] not in info.get("splits", [out["split"]]):
        raise LookupError(f"images.split: expected one of {info['splits']}, got {out['split']!r}")
    return out


def _detector_config(trainer: str, cfg: dict, folder: str):
    from .._config import config_from_mapping
    if trainer == "patchzero":
        from ..training.patchzero import PatchZeroTrainConfig as C
    else:
        from ..training.sac import SACTrainConfig as C
    for k in ("dataset", "image_size"):
        if k in cfg:
            raise ValueError(f"{k}: set by the artifact (images = {{...}}), not given")
    spec = _images_spec(cfg)
    fields = {k: v for k, v in cfg.items() if k != "images"}
    return spec, config_from_mapping(C, {**fields, "dataset": folder, "image_size": spec["size"]},
                                     "config")


def _write_images(spec: dict, n: int, folder: Path, log: Callable) -> Path:
    """The first ``n`` images of the split as PNG files in ``folder`` (once; a complete folder is
    kept)."""
    from PIL import Image

    from ..data import load_dataset
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "COMPLETE"
    if done.is_file() and done.read_text().strip() == str(n):
        return folder
    log(f"  writing {n} {spec['name']} {spec['split']} images to {folder}")
    x, _ = load_dataset(spec["name"], split=spec["split"], n=n, offset=spec["offset"],
                        size=spec["size"], seed=spec["seed"])
    u8 = (x * 255).round().clamp(0, 255).to("cpu").byte().permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(u8):
        Image.fromarray(a if a.shape[-1] == 3 else a[..., 0]).save(folder / f"{i:06d}.png")
    done.write_text(str(n))
    return folder


def _check_detector(trainer: str) -> Callable[[dict], None]:
    def check(cfg: dict) -> None:
        _detector_config(trainer, cfg, tempfile.gettempdir())   # any existing folder validates
    return check


def _build_detector(trainer: str) -> Callable[[dict, Path, Callable], Path]:
    def build(cfg: dict, folder: Path, log: Callable) -> Path:
        spec, probe = _detector_config(trainer, cfg, tempfile.gettempdir())
        images = _write_images(spec, probe.n_train, folder / "images", log)
        _, train_cfg = _detector_config(trainer, cfg, str(images))
        if trainer == "patchzero":
            from ..training.patchzero import train_patchzero as train
        else:
            from ..training.sac import train_sac as train
        src = Path(train(train_cfg, folder / "run", resume=True))
        dst = folder / src.name         # the harness's DONE marker names a file of the folder
        shutil.copy2(src, dst)
        return dst
    return build


def retrieval_kinds() -> Dict[str, object]:
    """The kinds above, as :class:`patchbench.bench.artifacts.ArtifactKind` by name."""
    from .artifacts import ArtifactKind
    return {k.name: k for k in (
        ArtifactKind("hasher", lambda cfg: _hasher_config(cfg) and None, _build_hasher),
        ArtifactKind("pair", lambda cfg: _pair_config(cfg) and None, _build_pair),
        ArtifactKind("patchzero-images", _check_detector("patchzero"), _build_detector("patchzero")),
        ArtifactKind("sac-images", _check_detector("sac"), _build_detector("sac")),
    )}


KIND_NAMES = ("hasher", "pair", "patchzero-images", "sac-images")

__all__ = ["retrieval_kinds", "KIND_NAMES", "PAIR_STAGES", "pair_run_folder"]
