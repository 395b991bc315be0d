"""The ``patchbench`` command. Sub-commands import their machinery lazily so ``--help`` is instant and
one broken optional area never breaks another."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out, quick=args.quick, seed=args.seed, device=args.device)
    return 0


def _cmd_attack(args) -> int:
    from .attack_cli import run_attack_command

    run_attack_command(model=args.model, attack=args.attack, area=args.area, shape=args.shape,
                       images=args.images, out=args.out, steps=args.steps, target=args.target,
                       seed=args.seed, device=args.device)
    return 0


def _cmd_train(args, rest: List[str]) -> int:
    what = args.what
    if what is None:                      # `patchbench train [--help]`: the targets' own help is theirs
        args.parser.print_help()
        return 0 if {"-h", "--help"} & set(rest) else 2
    if what == "classifier":
        from .training.classifier import main_train_classifier as fn
    elif what == "patchzero":
        from .training.patchzero import main_train_patchzero as fn
    elif what == "defensive-patch":
        from .defensive.train import main_train_defensive_patch as fn
    elif what == "face-patch":
        from .attacks.face import main_train_face_patch as fn
    else:  # argparse choices make this unreachable; kept as a clear message for direct callers
        raise SystemExit(f"unknown training target {what!r}")
    return int(fn(rest) or 0)


def _cmd_evaluate(args, rest: List[str]) -> int:
    from .presets import run_preset

    if not args.preset:
        args.parser.print_help()
        return 0 if {"-h", "--help"} & set(rest) else 2
    run_preset(args.preset, out_dir=args.out, argv=rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patchbench",
                                description="Attack, defend and benchmark vision models against physical patches.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="real model, real photos, patch attacks → HTML report (offline)")
    d.add_argument("--out", default="reports/demo", help="output folder (default reports/demo)")
    d.add_argument("--quick", action="store_true", help="fewer images/steps (smoke test)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu", help="cpu or cuda")
    d.set_defaults(func=_cmd_demo)

    a = sub.add_parser("attack", help="attack a model on a folder of images")
    a.add_argument("--model", default="mobilenet_v2")
    a.add_argument("--attack", default="masked-pgd")
    a.add_argument("--area", type=float, default=0.05, help="patch area as a fraction of the image")
    a.add_argument("--shape", default="square")
    a.add_argument("--images", required=True, help="a folder of images (or class sub-folders)")
    a.add_argument("--out", default="runs/attack")
    a.add_argument("--steps", type=int, default=None)
    a.add_argument("--target", type=int, default=None, help="target class for a targeted attack")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="cpu")
    a.set_defaults(func=_cmd_attack)

    # add_help=False: `patchbench train classifier --help` reaches the target's own parser.
    t = sub.add_parser("train", add_help=False,
                       help="train a model/detector/patch (options after the target; TARGET --help)")
    t.add_argument("what", nargs="?", choices=["classifier", "patchzero", "defensive-patch", "face-patch"])
    t.set_defaults(func=_cmd_train, takes_rest=True, parser=t)

    e = sub.add_parser("evaluate", add_help=False,
                       help="run an evaluation preset end to end (--preset NAME --help: its options)")
    e.add_argument("--preset", required=False,
                   help="defenses | defensive-patch | face-patch")
    e.add_argument("--out", default=None, help="output folder (default reports/<preset>)")
    e.set_defaults(func=_cmd_evaluate, takes_rest=True, parser=e)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if getattr(args, "takes_rest", False):
            return args.func(args, rest)
        if rest:
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        return args.func(args)
    except (ValueError, LookupError, FileNotFoundError, TypeError) as e:
        print(f"patchbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("patchbench: interrupted (finished work is saved)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
