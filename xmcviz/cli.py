"""Command line: ``xmcviz train|data|inspect|sweep ...`` (also ``python -m xmcviz``).

Subcommands are the entries of :data:`COMMANDS`, ``name -> Command(add_arguments, run, help)``;
adding one is a pair of functions and an entry there.

``xmcviz train`` is derived from the settings: one flag per field of
:class:`~xmcviz.core.config.TrainConfig` (the multi-label mode) and of
:class:`~xmcviz.softmax.trainer.SoftmaxConfig` (``--first-label-only``), named ``--field-name``
(renames: :data:`FLAG_RENAMES`), typed by the annotation, with the field's help, metavar and
choices.  A flag left out takes the chosen mode's default.  A flag given explicitly that the
run would not read is refused (exit 2), never ignored:

- a setting the chosen mode's config does not have (``--model`` with ``--first-label-only``,
  ``--reg`` without it; ``--hooks`` belongs to the multi-label mode);
- a negative-sampling setting the chosen sampler does not read (its ``options``), e.g.
  ``--mips-k`` with ``uniform`` or ``mips-a`` (k = R), ``--nprobe`` with ``top``,
  ``--negatives`` with ``full``;
- a setting outside its ``only_with`` (``--hidden``, ``--dropout`` with ``--model linear``).

``--help`` says in brackets where a setting applies.  The checks of the last two are in
:meth:`~xmcviz.core.config.TrainConfig.validate` (``given=``).

Exit codes: 0 success; 2 a bad setting or input, reported before any training (the message
names the value and the allowed range; no traceback); 1 training diverged; 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .core.config import FIRST_LABEL, SAMPLING
from .samplers import SAMPLER_NAMES, samplers_reading

__all__ = ["main", "build_parser", "COMMANDS", "Command",
           "config_from_args", "add_train_arguments", "run_train", "add_data_arguments",
           "run_data", "FLAG_RENAMES", "flag_names", "train_settings", "given_settings"]

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A bad setting or input: reported as ``xmcviz: error: ...`` with exit code 2."""


@dataclass
class Command:
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str = ""


# ---------------------------------------------------------------------------------- train
# ``xmcviz train`` has one flag per setting of TrainConfig (multi-label mode) and of
# SoftmaxConfig (``--first-label-only``), derived from the fields: type from the annotation,
# help / metavar / choices / group from the field's metadata (xmcviz.core.config.setting).


@dataclass(frozen=True)
class Flag:
    """The command-line spelling of a setting whose flag is not ``--field-name``."""

    names: tuple[str, ...]
    help: str | None = None  # for a flag that turns a True setting off


# The one table of renamed flags.  A bool setting that defaults to True must be here: its flag
# turns it off, and needs a name and a help saying so.
FLAG_RENAMES: dict[str, Flag] = {
    "negatives": Flag(("--negatives", "-R")),
    "eval_every_steps": Flag(("--eval-every",)),
    "checkpoint_every_steps": Flag(("--checkpoint-every",)),
    "sparse_updates": Flag(("--dense-updates",),
                           "dense Adam on every label row (default: SparseAdam, loss rows only)"),
    "progress": Flag(("--no-progress",), "no progress bars"),
}
HOOKS_HELP = ("hooks as NAME[:EVERY],... from ranks, freq, grad, staleness, metrics; 'default' = "
              "ranks,freq,grad,staleness at their default intervals; 'none' = no hooks (files "
              "under OUT/hooks/)")


def _config_classes() -> tuple[type, type]:
    """(multi-label, first-label) config classes."""
    from .core.config import TrainConfig
    from .softmax.trainer import SoftmaxConfig
    return TrainConfig, SoftmaxConfig


def flag_names(name: str) -> tuple[str, ...]:
    """The flags of the setting ``name`` (``--field-name`` unless :data:`FLAG_RENAMES` says)."""
    return FLAG_RENAMES[name].names if name in FLAG_RENAMES else ("--" + name.replace("_", "-"),)


def _value_type(cls: type, name: str) -> type:
    """The annotation of field ``name`` without ``| None`` (``tuple`` for tuples)."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return typing.get_origin(hint) or hint


def _fmt(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def train_settings() -> dict[str, list]:
    """Setting name -> its fields in the mode configs that have it (multi-label first)."""
    settings: dict[str, list] = {}
    for cls in _config_classes():
        for f in dataclasses.fields(cls):
            settings.setdefault(f.name, []).append(f)
    return settings


def _add_setting(groups: dict[str, Any], p: argparse.ArgumentParser, name: str, flds: list
                 ) -> None:
    """Add the flag of setting ``name`` (``flds``: its fields, multi-label config's first)."""
    meta = next((f.metadata for f in flds if f.metadata.get("help")), None)
    if meta is None:
        raise TypeError(f"setting {name!r} has no help: declare it with xmcviz.core.config.setting")
    ml, fl = _config_classes()
    owner = ml if name in {f.name for f in dataclasses.fields(ml)} else fl
    vtype, default = _value_type(owner, name), flds[0].default
    kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
    helptext = meta["help"]
    if vtype is bool:
        if default and name not in FLAG_RENAMES:
            raise TypeError(f"bool setting {name!r} defaults to True: give its flag (which turns "
                            f"it off) a name and help in FLAG_RENAMES")
        kw["action"] = "store_false" if default else "store_true"
        helptext = FLAG_RENAMES[name].help if default else helptext
    else:
        kw["type"] = str if vtype is tuple else vtype  # tuples: parsed in config_from_args
        kw["metavar"] = meta.get("metavar")
        choices = [c for f in flds for c in (f.metadata.get("choices") or ())]
        if choices:
            kw["choices"] = list(dict.fromkeys(choices))
        if default is not None:
            defaults = {f.default for f in flds}
            note = f"default {_fmt(default)}"
            if len(defaults) > 1:
                note += f"; {_fmt(flds[1].default)} with --first-label-only"
            helptext = f"{helptext} ({note})"
    # Refused outside these values: say where it applies, or where not when that is shorter.
    where = {k: f"with {k} {', '.join(v)}" for k, v in (meta.get("only_with") or {}).items()}
    readers = samplers_reading(name) if meta["group"] == SAMPLING else SAMPLER_NAMES
    others = [n for n in SAMPLER_NAMES if n not in readers]
    if others:
        where["sampler"] = (f"not with sampler {', '.join(others)}" if len(others) < len(readers)
                            else f"with sampler {', '.join(readers)}")
    if where:
        helptext += f" [{'; '.join(where.values())}]"
    _group(groups, p, meta["group"]).add_argument(
        *flag_names(name), help=helptext.replace("%", "%%"), **kw)


def _group(groups: dict[str, Any], p: argparse.ArgumentParser, title: str) -> Any:
    """The argument group ``title``, made on first use (the mode switch opens its group)."""
    if title not in groups:
        groups[title] = p.add_argument_group(title)
        if title == FIRST_LABEL:
            groups[title].add_argument(
                "--first-label-only", action="store_true",
                help="softmax on each row's first label, linear scores, one negative per "
                     "positive, Adagrad; --sampler adversarial, uniform, frequency, nce, or "
                     "full (the full softmax, the reference)")
    return groups[title]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``xmcviz train``: one flag per setting of the two modes' configs (unset
    flags are absent from the parsed namespace, so a mode can tell what was given), plus
    ``--first-label-only`` and ``--hooks``."""
    groups: dict[str, Any] = {}
    for name, flds in train_settings().items():
        _add_setting(groups, p, name, flds)
    _group(groups, p, FIRST_LABEL)
    p.add_argument_group("instruments").add_argument(
        "--hooks", default=argparse.SUPPRESS, metavar="SPEC", help=HOOKS_HELP)


def given_settings(args: argparse.Namespace) -> list[str]:
    """The settings (and ``hooks``) set on the command line, in flag order."""
    return [n for n in [*train_settings(), "hooks"] if hasattr(args, n)]


def _refuse_other_mode(args: argparse.Namespace, cls: type) -> None:
    """Refuse flags of settings that the chosen mode's config ``cls`` does not have."""
    first_label = bool(getattr(args, "first_label_only", False))
    own = {f.name for f in dataclasses.fields(cls)} | (set() if first_label else {"hooks"})
    other = [n for n in given_settings(args) if n not in own]
    if not other:
        return
    flags = ", ".join(flag_names(n)[0] for n in other)
    if first_label:
        raise ValueError(f"{flags} not supported with --first-label-only: the first-label "
                         f"softmax mode does not read them (see xmcviz train --help)")
    raise ValueError(f"{flags} only supported with --first-label-only (the first-label "
                     f"softmax mode)")


def config_from_args(args: argparse.Namespace, cls: type | None = None):
    """The config (``cls``; default :class:`~xmcviz.core.config.TrainConfig`) of parsed
    ``train`` arguments: the given flags, the config's defaults for the rest."""
    cls = cls or _config_classes()[0]
    kw = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if _value_type(cls, f.name) is tuple and isinstance(value, str):
            try:
                value = tuple(int(k) for k in value.split(",") if k.strip())
            except ValueError:
                raise ValueError(f"{f.name}={value!r} is not supported: allowed a comma-separated "
                                 f"list of integers >= 1") from None
        kw[f.name] = value
    return cls(**kw)


def run_train(args: argparse.Namespace, hooks: Sequence = ()) -> int:
    """``xmcviz train``: validate everything, train, print the final metrics as JSON."""
    from .hooks import make_hooks
    from .core.trainer import Trainer
    if getattr(args, "first_label_only", False):
        return run_train_softmax(args)

    def build():
        _refuse_other_mode(args, _config_classes()[0])
        config = config_from_args(args)
        all_hooks = [*make_hooks(getattr(args, "hooks", "default")), *hooks]
        # settings that need no data, before the (maybe slow) loading
        config.validate(given=given_settings(args))
        return Trainer(_check_data(config), hooks=all_hooks)
    return _train_and_report(build)


def _check_data(config):
    if config.data is None and config.train is None:
        raise ValueError("no data: pass --data DIR_OR_NAME or --train FILE --test FILE")
    return config


def _train_and_report(build: Callable[[], object]) -> int:
    """Build a trainer (bad settings: exit 2, before training), train, print the final record."""
    from .core.trainer import TrainingDiverged
    try:
        trainer = build()
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    try:
        final = trainer.train()
    except TrainingDiverged as e:
        print(f"xmcviz: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    print(json.dumps(final, indent=2))
    return EXIT_OK


def run_train_softmax(args: argparse.Namespace) -> int:
    """``xmcviz train --first-label-only``: the softmax setting of :mod:`xmcviz.softmax.trainer`."""
    from .softmax.trainer import SoftmaxTrainer

    def build():
        cls = _config_classes()[1]
        _refuse_other_mode(args, cls)
        return SoftmaxTrainer(_check_data(config_from_args(args, cls).validate()))
    return _train_and_report(build)


# ----------------------------------------------------------------------------------- data
def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC",
                   help="dataset folder, file, or name (synthetic:eurlex-like, tiny, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic data")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    # ``xmcviz data make-synthetic OUT/ --like amazon-670k``: a large file of a published shape
    # (OUT right after make-synthetic: argparse takes the positionals together).
    p.add_argument("out", metavar="OUT", nargs="?",
                   help="with SPEC make-synthetic: folder to write train.txt and test.txt to")
    p.add_argument("--like", default="amazon-670k",
                   help="make-synthetic: the benchmark whose shape to copy (registry name)")
    p.add_argument("--rows", type=int, default=None,
                   help="make-synthetic: cap on the training rows (default: the published count)")


def _run_make_synthetic(args: argparse.Namespace) -> int:
    from .data.make_large import write_xc_like
    if args.out is None:
        raise UsageError("make-synthetic needs an output folder: xmcviz data make-synthetic "
                         "OUT/ --like amazon-670k")
    try:
        paths = write_xc_like(args.out, like=args.like, rows=args.rows, seed=args.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print("\n".join(str(p) for p in paths))
    return EXIT_OK


def run_data(args: argparse.Namespace) -> int:
    """``xmcviz data SPEC``: a summary of the dataset (``Dataset.summary()``)."""
    from . import data
    if args.spec == "make-synthetic":
        return _run_make_synthetic(args)
    if args.out is not None:
        raise UsageError(f"unexpected argument {args.out!r}: only make-synthetic takes OUT")
    try:
        ds = data.resolve(args.spec, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    summary = ds.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        width = max(len(k) for k in summary)
        for k, v in summary.items():
            print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return EXIT_OK




# ------------------------------------------------------------------------- inspect, sweep
def _add_inspect(p: argparse.ArgumentParser) -> None:
    from .notebook.inspect import add_inspect_arguments
    add_inspect_arguments(p)


def _run_inspect(args: argparse.Namespace) -> int:
    from .notebook.inspect import run_inspect_cli
    try:
        return run_inspect_cli(args)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None


def _add_sweep(p: argparse.ArgumentParser) -> None:
    from .sweep.cli import add_sweep_arguments
    add_sweep_arguments(p)


def _run_sweep(args: argparse.Namespace) -> int:
    from .sweep.cli import run_sweep_cli
    return run_sweep_cli(args)


COMMANDS: dict[str, Command] = {
    "train": Command(add_train_arguments, run_train, "train a model with sampled negatives"),
    "data": Command(add_data_arguments, run_data, "summarise a dataset"),
    "inspect": Command(_add_inspect, _run_inspect, "print a short summary of a run directory"),
    "sweep": Command(_add_sweep, _run_sweep, "run a notebook with papermill over a parameter grid"),
}


# ----------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xmcviz", description="Hard-negative sampling in "
                                     "extreme multi-label classification.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse errors exit with 2 itself)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args))
    except UsageError as e:
        print(f"xmcviz {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("xmcviz: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
