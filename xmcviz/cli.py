"""Command line: ``xmcviz train|data|inspect|sweep ...`` (also ``python -m xmcviz``).

Subcommands live in :data:`COMMANDS`, a dict ``name -> Command(add_arguments, run, help)``;
adding one (``inspect``, ``sweep``) takes a few lines::

    def add_inspect_arguments(p: argparse.ArgumentParser) -> None: ...
    def run_inspect(args: argparse.Namespace) -> int: ...
    register_command("inspect", add_inspect_arguments, run_inspect, "look at a run")

Exit codes: 0 success; 2 a bad setting or input, reported before any training (the message
names the value and the allowed range; no traceback); 1 training diverged; 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["main", "build_parser", "register_command", "COMMANDS", "Command",
           "config_from_args", "add_train_arguments", "run_train", "add_data_arguments",
           "run_data"]

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A bad setting or input: reported as ``xmcviz: error: ...`` with exit code 2."""


@dataclass
class Command:
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str = ""


COMMANDS: dict[str, Command] = {}


def register_command(name: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                     run: Callable[[argparse.Namespace], int], help: str = "") -> None:
    """Add (or replace) a subcommand."""
    COMMANDS[name] = Command(add_arguments, run, help)


# ---------------------------------------------------------------------------------- train
def _sampler_choices() -> Sequence[str]:
    from .softmax.trainer import SOFTMAX_METHODS
    from .core.trainer import sampler_names
    names = tuple(sampler_names())  # + softmax-only methods (nce), checked against the mode later
    return names + tuple(m for m in SOFTMAX_METHODS if m not in names)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``xmcviz train`` (one per :class:`~xmcviz.core.trainer.TrainConfig` setting)."""
    from .core.models import MODEL_NAMES
    from .softmax.trainer import SoftmaxConfig
    from .core.trainer import TrainConfig
    d, sd = TrainConfig(), SoftmaxConfig()
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR_OR_NAME",
                   help="dataset folder, file, or name (synthetic:eurlex-like, tiny, small, ...)")
    g.add_argument("--train", metavar="FILE", help="training file (with --test)")
    g.add_argument("--test", metavar="FILE", help="test file (with --train)")
    g.add_argument("--data-seed", type=int, default=d.data_seed, help="seed of synthetic data")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODEL_NAMES, default=d.model)
    g.add_argument("--hidden", type=int, default=d.hidden, help="mlp hidden units")
    g.add_argument("--dropout", type=float, default=d.dropout, help="mlp input dropout")
    g.add_argument("--label-bias", action="store_true", help="a bias per label (default: none)")
    g = p.add_argument_group("negative sampling")
    g.add_argument("--sampler", choices=_sampler_choices(), default=d.sampler)
    g.add_argument("--negatives", "-R", type=int, default=d.negatives, metavar="R",
                   help="negatives per row")
    g.add_argument("--mips-k", type=int, metavar="k",
                   help="negatives from MIPS / exact top (k <= R)")
    g.add_argument("--clusters", type=int, metavar="K", help="IVF clusters (default sqrt(L))")
    g.add_argument("--nprobe", type=int, metavar="TAU", help="clusters searched per query (<= K)")
    r = g.add_mutually_exclusive_group()
    r.add_argument("--refresh-every", type=int, metavar="P", help="index refresh interval (steps)")
    r.add_argument("--refreshes-per-epoch", type=int, metavar="PPE",
                   help="index refreshes per epoch")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, metavar="E",
                   help="uniform negatives for the first E epochs")
    g = p.add_argument_group("optimisation")
    g.add_argument("--eta-ratio", type=float, default=d.eta_ratio, metavar="r",
                   help="weight of the positive part, eta+/eta-")
    g.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (default {d.lr}; 0.01 with --first-label-only)")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device,
                   help="auto (CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--dense-updates", action="store_true",
                   help="dense Adam on every label row (default: SparseAdam, loss rows only)")
    g = p.add_argument_group("evaluation and run directory")
    g.add_argument("--eval-every", type=int, metavar="N", help="also evaluate every N steps")
    g.add_argument("--eval-ks", default=",".join(map(str, d.eval_ks)), metavar="K1,K2,...")
    g.add_argument("--propensity-a", type=float, metavar="A", help="default: from the dataset")
    g.add_argument("--propensity-b", type=float, metavar="B", help="default: from the dataset")
    g.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="also checkpoint every N steps (always at the end of each epoch)")
    g.add_argument("--out", metavar="DIR", help="run directory (config, metrics, checkpoint)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("first-label softmax (Bamler & Mandt's setting)")
    g.add_argument("--first-label-only", action="store_true",
                   help="softmax on each row's first label, linear scores, one negative per "
                        "positive, Adagrad; --sampler adversarial, uniform, frequency or nce")
    g.add_argument("--reg", type=float, default=sd.reg, metavar="LAMBDA",
                   help="regulariser weight of the adversarial loss (first-label mode)")
    g.add_argument("--adv-dims", type=int, default=sd.adv_dims, metavar="k",
                   help="PCA dims of the adversarial tree (first-label mode)")
    g = p.add_argument_group("instruments")
    g.add_argument("--hooks", default="default", metavar="SPEC",
                   help="hooks as NAME[:EVERY],... from ranks, freq, grad, staleness, metrics; "
                        "'default' = ranks,freq,grad,staleness at their default intervals; "
                        "'none' = no hooks (files under OUT/hooks/)")


def config_from_args(args: argparse.Namespace):
    """The :class:`~xmcviz.core.trainer.TrainConfig` of parsed ``train`` arguments."""
    from .core.trainer import TrainConfig
    try:
        ks = tuple(int(k) for k in str(args.eval_ks).split(",") if k.strip())
    except ValueError:
        raise ValueError(f"eval_ks={args.eval_ks!r} is not supported: allowed a comma-separated "
                         f"list of integers >= 1") from None
    return TrainConfig(
        data=args.data, train=args.train, test=args.test, data_seed=args.data_seed,
        model=args.model, hidden=args.hidden, dropout=args.dropout, label_bias=args.label_bias,
        sampler=args.sampler, negatives=args.negatives, mips_k=args.mips_k,
        clusters=args.clusters, nprobe=args.nprobe, refresh_every=args.refresh_every,
        refreshes_per_epoch=args.refreshes_per_epoch, warmup_epochs=args.warmup_epochs,
        eta_ratio=args.eta_ratio, lr=TrainConfig.lr if args.lr is None else args.lr,
        batch_size=args.batch_size, epochs=args.epochs,
        seed=args.seed, device=args.device, sparse_updates=not args.dense_updates,
        eval_every_steps=args.eval_every, eval_ks=ks, propensity_a=args.propensity_a,
        propensity_b=args.propensity_b, checkpoint_every_steps=args.checkpoint_every,
        out=args.out, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress)


def run_train(args: argparse.Namespace, hooks: Sequence = ()) -> int:
    """``xmcviz train``: validate everything, train, print the final metrics as JSON."""
    from .hooks import make_hooks
    from .core.trainer import Trainer
    if getattr(args, "first_label_only", False):
        return run_train_softmax(args)

    def build():
        config = config_from_args(args)
        all_hooks = [*make_hooks(getattr(args, "hooks", None)), *hooks]
        config.validate()  # settings that need no data, before the (maybe slow) loading
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


def softmax_config_from_args(args: argparse.Namespace):
    """The :class:`~xmcviz.softmax.trainer.SoftmaxConfig` of ``train --first-label-only`` arguments."""
    from .softmax.trainer import SoftmaxConfig
    d = SoftmaxConfig()
    return SoftmaxConfig(
        data=args.data, train=args.train, test=args.test, data_seed=args.data_seed,
        sampler=args.sampler, lr=d.lr if args.lr is None else args.lr, reg=args.reg,
        batch_size=args.batch_size, epochs=args.epochs, seed=args.seed, adv_dims=args.adv_dims,
        eval_every_steps=args.eval_every, device=args.device, out=args.out,
        overwrite=args.overwrite, progress=not args.no_progress)


def run_train_softmax(args: argparse.Namespace) -> int:
    """``xmcviz train --first-label-only``: the softmax setting of :mod:`xmcviz.softmax.trainer`."""
    from .softmax.trainer import SoftmaxTrainer

    def build():
        if args.resume:
            raise ValueError("resume=True is not supported with --first-label-only (runs are "
                             "short): use --overwrite")
        return SoftmaxTrainer(_check_data(softmax_config_from_args(args).validate()))
    return _train_and_report(build)


# ----------------------------------------------------------------------------------- data
def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC",
                   help="dataset folder, file, or name (synthetic:eurlex-like, tiny, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic data")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_data(args: argparse.Namespace) -> int:
    """``xmcviz data SPEC``: a summary of the dataset (``Dataset.summary()``)."""
    from . import data
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


register_command("train", add_train_arguments, run_train, "train a model with sampled negatives")
register_command("data", add_data_arguments, run_data, "summarise a dataset")


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
    from .sweep import add_sweep_arguments
    add_sweep_arguments(p)


def _run_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep_cli
    return run_sweep_cli(args)


register_command("inspect", _add_inspect, _run_inspect, "print a short summary of a run directory")
register_command("sweep", _add_sweep, _run_sweep,
                 "run a notebook with papermill over a parameter grid")


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
