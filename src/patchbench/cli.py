"""The ``patchbench`` command. Sub-commands import their machinery lazily so ``--help`` is instant and
one broken optional area never breaks another.

User errors (bad flags, unknown names, missing files, ...) end as one line ``patchbench: error: ...``
on stderr and exit code 2, with no traceback; flags are checked when they are parsed, before any
model is loaded or any attack / training starts. The argparse helpers here (:class:`ArgumentParser`,
``*_arg`` types) are shared by the sub-commands' own parsers (``train TARGET``, ``evaluate --preset``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

#: what a user error may raise below the parser; anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, LookupError, TypeError, OSError, ImportError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``patchbench: error: ...`` (exit code 2)."""

    def error(self, message: str):
        print(f"patchbench: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _arg(check: Callable, *args, **kwargs) -> Callable[[str], object]:
    """An argparse ``type=`` from a ``_validation`` check: the check's message (without its name
    prefix) becomes ``argument --flag: ...``."""
    def convert(text: str):
        try:
            return check(text, *args, **kwargs)
        except (TypeError, ValueError, LookupError, FileNotFoundError) as e:
            msg = str(e)
            raise argparse.ArgumentTypeError(msg[len("value: "):] if msg.startswith("value: ")
                                             else msg) from None
    convert.__name__ = getattr(check, "__name__", "value")
    return convert


def _int(text: str, minimum: int) -> int:
    from ._validation import check_int
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"value: expected an integer, got {text!r}") from None
    return check_int(v, "value", minimum)


def _float(text: str, low=None, high=None, low_inclusive=True, high_inclusive=True) -> float:
    from ._validation import check_number
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"value: expected a number, got {text!r}") from None
    return check_number(v, "value", low, high, low_inclusive, high_inclusive)


def _seed(text: str) -> int:
    from ._validation import check_seed
    return check_seed(_int(text, 0), "value")


def _device(text: str) -> str:
    from ._validation import check_device
    check_device(text, "value")
    return text


def _out_dir(text: str) -> str:
    from ._validation import check_path
    check_path(text, "value", kind="dir", must_exist=False)
    return text


def _out_file(text: str) -> str:
    from ._validation import check_path
    check_path(text, "value", kind="file", must_exist=False)
    return text


def _config_file(text: str) -> str:
    from ._validation import check_path
    check_path(text, "value", kind="file", must_exist=True)
    return text


positive_int_arg = _arg(_int, 1)
nonnegative_int_arg = _arg(_int, 0)
threads_arg = _arg(_int, 1)
seed_arg = _arg(_seed)
positive_float_arg = _arg(_float, 0.0, None, False)
nonnegative_float_arg = _arg(_float, 0.0)
fraction_arg = _arg(_float, 0.0, 1.0, False, False)          # open interval (0, 1): patch areas
chance_arg = _arg(_float, 0.0, 1.0)                          # closed [0, 1]: probabilities
device_arg = _arg(_device)
out_dir_arg = _arg(_out_dir)
out_file_arg = _arg(_out_file)
config_file_arg = _arg(_config_file)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out, quick=args.quick, seed=args.seed, device=args.device)
    return 0


def _area(text: str) -> float:
    from .attack_cli import check_area
    return check_area(text, "value")


def _target(text: str):
    from .attack_cli import check_target_text
    try:
        return check_target_text(text)
    except (TypeError, ValueError) as e:
        raise ValueError("value: " + str(e).partition(": ")[2]) from None


area_arg = _arg(_area)          # (0, 0.5], with "did you mean 0.05?" for a percentage
target_arg = _arg(_target)      # a class index >= 0 or a class name


class _LazyHelp(str):
    """A help string computed only when ``--help`` is printed (so the parser never imports torch)."""

    def __new__(cls, make: Callable[[], str]):
        obj = super().__new__(cls, "...")
        obj._make = make
        return obj

    def __mod__(self, params):
        return self._make() % params


def _model_help() -> str:
    from .models import names, spec_forms
    forms = "; ".join(f"{form}: {what}" for form, what in spec_forms())
    return (f"the model: a zoo name ({', '.join(names(kind='classifier'))}); or {forms} "
            f"(default: %(default)s)")


def _attack_help() -> str:
    from . import attacks
    ok = [n for n in attacks.names() if getattr(attacks.get(n), "task", "") == "classification"]
    return f"a classification attack: one of {', '.join(ok)} (default: %(default)s)"


def _shape_help() -> str:
    from .patches.shapes import SHAPES
    return f"patch shape: one of {', '.join(SHAPES)} (default: %(default)s)"


def _cmd_attack(args) -> int:
    import warnings

    from .attack_cli import SkippedFilesWarning, run_attack_command

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFilesWarning)
        try:
            run_attack_command(model=args.model, attack=args.attack, area=args.area,
                               shape=args.shape, images=args.images, out=args.out,
                               steps=args.steps, target=args.target, seed=args.seed,
                               device=args.device, overwrite=args.overwrite,
                               print_size_cm=args.print_size_cm, argv=args.argv)
        finally:
            for w in caught:
                if issubclass(w.category, SkippedFilesWarning):
                    print(f"patchbench: warning: {w.message}", file=sys.stderr, flush=True)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return 0


#: ``patchbench train TARGET``: the module and function that parse the target's own options
TRAIN_TARGETS = {
    "classifier": ("patchbench.training.classifier", "main_train_classifier"),
    "patchzero": ("patchbench.training.patchzero", "main_train_patchzero"),
    "defensive-patch": ("patchbench.defensive.train", "main_train_defensive_patch"),
    "face-patch": ("patchbench.training.face_patch", "main_train_face_patch"),
    "hasher": ("patchbench.training.hasher", "main_train_hasher"),
    "sac": ("patchbench.training.sac", "main_train_sac"),
    "pair": ("patchbench.training.pair", "main_train_pair"),
    "dual-encoder": ("patchbench.training.dual_encoder", "main_train_dual_encoder"),
}


def _cmd_train(args, rest: List[str]) -> int:
    import importlib

    what = args.what
    if what is None:                      # `patchbench train [--help]`: the targets' own help is theirs
        args.parser.print_help()
        return 0 if {"-h", "--help"} & set(rest) else 2
    if what not in TRAIN_TARGETS:  # argparse choices make this unreachable; kept for direct callers
        raise LookupError(f"unknown training target {what!r}")
    module, fn = TRAIN_TARGETS[what]
    return int(getattr(importlib.import_module(module), fn)(rest) or 0)


def _cmd_evaluate(args, rest: List[str]) -> int:
    from .bench.aliases import check_preset, run_preset

    if not args.preset:
        args.parser.print_help()
        return 0 if {"-h", "--help"} & set(rest) else 2
    try:
        check_preset(args.preset)                    # an unknown name fails before its imports
    except LookupError as e:
        raise LookupError(f"--preset: {e}") from None
    run_preset(args.preset, out_dir=args.out, argv=rest)
    return 0


def _cmd_run(args) -> int:
    from .bench import config as C
    from .bench.runner import run_experiment

    exp = C.load(args.experiment)               # validated before anything runs
    if args.out is None:
        args.out = f"runs/{exp.name}"
    summary = run_experiment(exp, args.out, executor=args.executor, address=args.address,
                             only=args.only, dry_run=args.dry_run)
    if not args.dry_run:
        from .bench.pages import build_report
        try:
            page = build_report([summary.out_dir])
            where = f"report {page}"
        except Exception as e:  # noqa: BLE001 - the results are stored; the page can be rebuilt
            where = f"the report failed ({_one_line(e)}); rebuild it with patchbench report {summary.out_dir}"
        print(f"results: {summary.out_dir / 'results.db'} (results.json, results.csv); {where}")
    print(summary.line(), flush=True)
    return 0


def _cmd_report(args, rest: List[str]) -> int:
    from .bench.pages import main_report

    return int(main_report(rest) or 0)


def _cmd_list(args) -> int:
    import patchbench as pb

    for name in pb.list(args.kind):
        print(name)
    if args.kind == "models":
        from .models import spec_forms
        print("\nand any of these forms (patchbench attack --model, experiment files, "
              "pb.models.load):")
        for form, what in spec_forms():
            print(f"  {form:26s} {what}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = ArgumentParser(prog="patchbench",
                       description="Attack, defend and benchmark vision models against physical patches.")
    p.add_argument("--version", action="version", version=f"patchbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="real model, real photos, patch attacks → HTML report (offline)")
    d.add_argument("--out", default="reports/demo", type=out_dir_arg,
                   help="output folder (default reports/demo)")
    d.add_argument("--quick", action="store_true", help="fewer images/steps (smoke test)")
    d.add_argument("--seed", type=seed_arg, default=0)
    d.add_argument("--device", default="cpu", type=device_arg, help="cpu or cuda")
    d.set_defaults(func=_cmd_demo)

    a = sub.add_parser(
        "attack", help="attack any model on a folder of photos (class sub-folders = labels)",
        description="Attack a model on the photos of --images (its files and class sub-folders, "
                    "whose names are matched to the model's classes; other images use the clean "
                    "prediction as reference) and write --out: adversarial/ and masks/ at the "
                    "photos' original size, the printable patch PNG(s) with their NPS, results.json "
                    "and index.html.")
    a.add_argument("--model", default="mobilenet_v2", help=_LazyHelp(_model_help))
    a.add_argument("--attack", default="masked-pgd", help=_LazyHelp(_attack_help))
    a.add_argument("--area", type=area_arg, default=0.05,
                   help="patch area as a fraction of the image, in (0, 0.5] (default: %(default)s)")
    a.add_argument("--shape", default="square", help=_LazyHelp(_shape_help))
    a.add_argument("--images", required=True,
                   help="a folder of photos and/or class sub-folders, or one photo")
    a.add_argument("--out", default="runs/attack", type=out_dir_arg,
                   help="run folder: new or empty, or a previous patchbench attack run to replace "
                        "with --overwrite (default: %(default)s)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace the previous patchbench attack run in --out (only its own files "
                        "are deleted; a folder holding other files is always refused)")
    a.add_argument("--steps", type=positive_int_arg, default=None,
                   help="iterations (the attack's steps, or epochs for a universal patch; default: "
                        "the attack's own)")
    a.add_argument("--target", type=target_arg, default=None,
                   help="targeted attack: a class name (e.g. 'Egyptian Mau') or index (default: "
                        "untargeted)")
    a.add_argument("--print-size-cm", type=positive_float_arg, default=5.0,
                   help="printed size of the patch's longer side, in cm (sets the PNG's DPI; "
                        "default: %(default)s)")
    a.add_argument("--seed", type=seed_arg, default=0, help="default: %(default)s")
    a.add_argument("--device", default="cpu", type=device_arg,
                   help="cpu or cuda (default: %(default)s)")
    a.set_defaults(func=_cmd_attack)

    # add_help=False: `patchbench train classifier --help` reaches the target's own parser.
    t = sub.add_parser("train", add_help=False,
                       help="train a model/detector/patch (options after the target; TARGET --help)")
    targets = list(TRAIN_TARGETS)
    t.add_argument("what", nargs="?", metavar="TARGET", choices=targets, help=" | ".join(targets))
    t.set_defaults(func=_cmd_train, takes_rest=True, parser=t)

    e = sub.add_parser("evaluate", add_help=False,
                       help="run an evaluation preset end to end (--preset NAME --help: its options)")
    e.add_argument("--preset", required=False,
                   help="defenses | defensive-patch | face-patch")
    e.add_argument("--out", default=None, type=out_dir_arg,
                   help="output folder (default reports/<preset>)")
    e.set_defaults(func=_cmd_evaluate, takes_rest=True, parser=e)

    r = sub.add_parser("run", help="run an experiment file (or a bundled one) into a results store",
                       description="Run every cell of an experiment not yet done in OUT/results.db "
                                   "(a killed run resumes), then export results.json/results.csv.")
    r.add_argument("experiment", metavar="NAME|FILE.toml",
                   help="a bundled experiment (patchbench list experiments) or a TOML file")
    r.add_argument("--out", default=None, type=out_dir_arg,
                   help="run folder (default runs/<experiment name>)")
    r.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local (this process, default) or ray (one task per cell)")
    r.add_argument("--address", default=None,
                   help="ray: a cluster to join ('auto' or HOST:PORT; default: start a local one)")
    r.add_argument("--only", default=None, metavar="PATTERN",
                   help="only cells whose label (or key) matches this glob / substring")
    r.add_argument("--dry-run", action="store_true",
                   help="list the cells and artifacts with a cost estimate, compute nothing")
    r.set_defaults(func=_cmd_run)

    # add_help=False: `patchbench report --help` reaches the report's own parser
    rp = sub.add_parser("report", add_help=False,
                        help="rebuild the HTML report of one or more run folders (DIR [DIR ...] "
                             "[--out DIR] [--open])")
    rp.set_defaults(func=_cmd_report, takes_rest=True, parser=rp)

    ls = sub.add_parser("list", help="list the registered names of a kind",
                        description="Names accepted in experiment files and on the command line.")
    ls.add_argument("kind", choices=["models", "attacks", "defenses", "corruptions", "datasets",
                                     "tasks", "experiments"])
    ls.set_defaults(func=_cmd_list)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``patchbench ARGV``; returns the exit code (0 done, 2 user error — usage errors included,
    130 interrupted). ``--help`` raises ``SystemExit(0)`` as argparse does."""
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if getattr(args, "takes_rest", False):
            return args.func(args, rest)
        if rest:
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return args.func(args)
    except USER_ERRORS as e:
        print(f"patchbench: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except SystemExit as e:                 # usage errors of this parser or of a sub-command's
        if e.code in (0, None):
            raise
        if not isinstance(e.code, int):        # SystemExit("message"): a user error, as one line
            print(f"patchbench: error: {' '.join(str(e.code).split())}", file=sys.stderr)
            return 2
        return e.code
    except KeyboardInterrupt:
        print("patchbench: interrupted (finished work is saved)", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.filename:
        msg = f"{e.filename}: {e.strerror or msg}"
    return msg


if __name__ == "__main__":
    sys.exit(main())
