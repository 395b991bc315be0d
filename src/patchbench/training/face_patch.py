"""``patchbench train face-patch``: train one universal face-hiding patch (Yang et al., ECCV 2020,
§3) on composite training faces against MTCNN, resumable. The attack itself is
:class:`patchbench.attacks.face.FacePatch`; this module is only its command line."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple

from ..attacks.face import INITS, POSITIONS, STRATEGIES, FacePatch


def scale_range(size: int) -> Tuple[int, int]:
    """Face heights for ``size``-pixel composites: 3/16 to 3/8 of the side (48–96 px at 256)."""
    return max(24, math.floor(size * 3 / 16)), max(24, math.floor(size * 3 / 8))


def main_train_face_patch(argv: Optional[Sequence[str]] = None) -> int:
    """``patchbench train face-patch --strategy S --out DIR``: train on composite train-split faces,
    write ``DIR/<strategy>.pt`` (patch + config + history) and ``DIR/<strategy>.png``; resumes from
    ``DIR/<strategy>.ckpt``."""
    from ..cli import (ArgumentParser, device_arg, fraction_arg, out_dir_arg, positive_float_arg,
                       positive_int_arg, seed_arg)

    p = ArgumentParser(prog="patchbench train face-patch",
                       description="Train a universal face-hiding patch against MTCNN (resumable).")
    p.add_argument("--strategy", default="patch-combination", choices=STRATEGIES)
    p.add_argument("--out", default="runs/face-patch", type=out_dir_arg)
    p.add_argument("--init", default="noise", choices=INITS)
    p.add_argument("--position", default="top-center", choices=POSITIONS)
    p.add_argument("--alpha", type=fraction_arg, default=0.5,
                   help="patch side as a fraction of sqrt(w·h) of the face box (default 0.5)")
    p.add_argument("--epochs", type=positive_int_arg, default=10)
    p.add_argument("--lr", type=positive_float_arg, default=0.1)
    p.add_argument("--batch-size", type=positive_int_arg, default=8)
    p.add_argument("--n-train", type=positive_int_arg, default=64,
                   help="composite training images (default 64)")
    p.add_argument("--size", type=positive_int_arg, default=192,
                   help="composite side in pixels (default 192)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--device", default="cpu", type=device_arg)
    a = p.parse_args(list(argv or []))
    fp = FacePatch(a.strategy, alpha=a.alpha, position=a.position, init=a.init, epochs=a.epochs,
                   lr=a.lr, batch_size=a.batch_size)      # validates the rest before any work
    from ..bench.report import tensor_to_pil
    from ..data.faces import composite_faces
    from ..models.mtcnn import load_mtcnn
    from .checkpoint import atomic_save

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train = composite_faces(a.n_train, size=(a.size, a.size), scale_range=scale_range(a.size),
                            split="train", generator=a.seed)
    patch = fp.fit(load_mtcnn(device=a.device), train.images.to(a.device), train.boxes,
                   generator=a.seed, checkpoint=out / f"{a.strategy}.ckpt", verbose=True)
    atomic_save({"patch": patch.cpu(), "config": fp.config(), "history": fp.history_},
                out / f"{a.strategy}.pt")
    tensor_to_pil(patch).save(out / f"{a.strategy}.png")
    print(f"patch written to {out / (a.strategy + '.pt')}")
    return 0
