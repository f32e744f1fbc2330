"""TrainConfig: every setting of a training run, validated up front.

One place to add a setting: a field of :class:`TrainConfig`, declared with :func:`setting`
(default, help, group; optionally metavar, choices, and ``only_with`` for a setting read only
with some values of another), and its check in :meth:`TrainConfig.validate`.  ``xmcviz train``
derives its flag from the field (name, type, choices, help; the few renamed flags are listed in
``xmcviz.cli.FLAG_RENAMES``) and refuses it where the run would not read it.  A setting that a
sampler reads goes in that sampler's ``from_config`` and ``options`` (see
:mod:`xmcviz.samplers`); nothing else needs an edit.

``resolve_device`` and ``steps_per_epoch`` are the two derived quantities the checks need.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Collection, Sequence

import torch

from ..samplers import SAMPLER_NAMES, samplers_reading
from ..samplers.faiss_index import default_clusters  # K's default, shared with the samplers
from ..samplers.clusters import default_meta_clusters
from ..validation import check_choice, check_float, check_int
from .models import MODEL_NAMES

__all__ = ["TrainConfig", "setting", "resolve_device", "steps_per_epoch", "check_run_settings",
           "DATA", "MODEL", "SAMPLING", "OPTIMISATION", "RUN", "FIRST_LABEL"]

# Groups of settings (sections of ``xmcviz train --help``); FIRST_LABEL: the settings only the
# first-label softmax mode has (xmcviz.softmax.trainer.SoftmaxConfig).
DATA, MODEL, SAMPLING, OPTIMISATION, RUN = ("data", "model", "negative sampling", "optimisation",
                                            "evaluation and run directory")
FIRST_LABEL = "first-label softmax (Bamler & Mandt's setting)"


def setting(default: Any, help: str, *, group: str, metavar: str | None = None,
            choices: Sequence[str] | None = None,
            only_with: dict[str, tuple] | None = None) -> Any:
    """A config field with the metadata its command-line flag is built from.

    ``help`` documents the setting (and is the flag's help); ``group`` is its section of
    ``--help``; ``metavar`` names the value; ``choices`` are the allowed strings.
    ``only_with``: ``{other setting: its values}`` outside which this setting is not read
    (given explicitly there, :meth:`TrainConfig.validate` refuses it).  Which sampler reads a
    negative-sampling setting is the samplers' ``options``, not this.
    """
    return field(default=default, metadata={
        "help": help, "group": group, "metavar": metavar,
        "choices": None if choices is None else tuple(choices), "only_with": only_with or {}})


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else is checked and returned."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device={device!r} is not supported: allowed 'auto', 'cpu', "
                             f"'cuda', 'cuda:N'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(dev)!r} is not supported: allowed 'auto', 'cpu', "
                         f"'cuda', 'cuda:N'")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device={str(dev)!r} is not available: no CUDA device (use 'cpu')")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device={str(dev)!r} is out of range: allowed cuda:0..cuda:{n - 1}")
    return dev


@dataclass
class TrainConfig:
    """Every setting of a training run (written to ``config.json``); each field's ``help``
    documents it.  ``None`` for a sampler setting means the sampler's default.
    """

    data: str | None = setting(
        None, "dataset folder, file, or name (synthetic:eurlex-like, tiny, small, ...)",
        group=DATA, metavar="DIR_OR_NAME")
    train: str | None = setting(None, "training file (with --test)", group=DATA, metavar="FILE")
    test: str | None = setting(None, "test file (with --train)", group=DATA, metavar="FILE")
    data_seed: int = setting(0, "seed of synthetic data", group=DATA)
    hide_labels: float = setting(
        0.0, "hide this fraction of the training positives (seeded by --data-seed) and count how "
        "often they are drawn as negatives (the `hidden` hook): false negatives made measurable",
        group=DATA, metavar="FRACTION")

    model: str = setting("mlp", "label scores: linear in x, or an mlp embedding of x",
                         group=MODEL, choices=MODEL_NAMES)
    hidden: int = setting(128, "mlp hidden units", group=MODEL, only_with={"model": ("mlp",)})
    dropout: float = setting(0.2, "mlp input dropout", group=MODEL,
                             only_with={"model": ("mlp",)})
    label_bias: bool = setting(False, "a bias per label (default: none)", group=MODEL)

    sampler: str = setting("uniform", "negative sampler", group=SAMPLING, choices=SAMPLER_NAMES)
    negatives: int = setting(100, "negatives per row", group=SAMPLING, metavar="R")
    mips_k: int | None = setting(None, "negatives from MIPS / exact top (k <= R; default 5)",
                                 group=SAMPLING, metavar="k")
    clusters: int | None = setting(None, "IVF clusters (default sqrt(L))", group=SAMPLING,
                                   metavar="K")
    nprobe: int | None = setting(None, "clusters searched per query (<= K; default min(16, K))",
                                 group=SAMPLING, metavar="TAU")
    refresh_every: int | None = setting(None, "index refresh interval (steps)", group=SAMPLING,
                                        metavar="P")
    refreshes_per_epoch: int | None = setting(
        None, "index refreshes per epoch (default 1; at most one of this and refresh_every)",
        group=SAMPLING, metavar="PPE")
    warmup_epochs: int = setting(0, "uniform negatives for the first E epochs", group=SAMPLING,
                                 metavar="E")
    # The meta-classifier sampler (samplers/meta.py): label clusters, its head's top-m, its loss.
    meta_clusters: int | None = setting(
        None, "label clusters of the meta-classifier (default: the power of two nearest "
        "sqrt(L))", group=SAMPLING, metavar="K")
    meta_topk: int | None = setting(
        None, "clusters whose labels are a row's candidates (<= K; default ceil(R K / L))",
        group=SAMPLING, metavar="m")
    meta_loss_weight: float = setting(1.0, "weight of the meta-classifier's BCE in the loss",
                                      group=SAMPLING, metavar="w")

    eta_ratio: float = setting(1.0, "weight of the positive part, eta+/eta-", group=OPTIMISATION,
                               metavar="r")
    # Adam; at 1e-3 the mlp stays near the label prior for epochs.
    lr: float = setting(1e-2, "learning rate", group=OPTIMISATION)
    batch_size: int = setting(256, "rows per step", group=OPTIMISATION)
    epochs: int = setting(5, "passes over the training data", group=OPTIMISATION)
    seed: int = setting(0, "seed of the model, the batch order and the negatives",
                        group=OPTIMISATION)
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda, cuda:N",
                          group=OPTIMISATION)
    sparse_updates: bool = setting(
        True, "SparseAdam on the label rows in the loss (False: dense Adam on every label row)",
        group=OPTIMISATION)

    eval_every_steps: int | None = setting(None, "also evaluate every N steps", group=RUN,
                                           metavar="N")
    eval_ks: tuple[int, ...] = setting((1, 3, 5), "k of the metrics at k (P@k, nDCG@k, PSP@k)",
                                       group=RUN, metavar="K1,K2,...")
    eval_batch_size: int = setting(1024, "test rows per evaluation batch", group=RUN)
    eval_rows: int | None = setting(
        None, "evaluate during training on a fixed, seeded subsample of N test rows "
              "(the final evaluation uses all of them)", group=RUN, metavar="N")
    propensity_a: float | None = setting(None, "default: from the dataset", group=RUN,
                                         metavar="A")
    propensity_b: float | None = setting(None, "default: from the dataset", group=RUN,
                                         metavar="B")
    checkpoint_every_steps: int | None = setting(
        None, "also checkpoint every N steps (always at the end of each epoch)", group=RUN,
        metavar="N")
    out: str | None = setting(None, "run directory (config, metrics, checkpoint)", group=RUN,
                              metavar="DIR")
    resume: bool = setting(False, "continue the run in --out", group=RUN)
    overwrite: bool = setting(False, "replace the run in --out", group=RUN)
    progress: bool = setting(True, "progress bars", group=RUN)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eval_ks"] = list(self.eval_ks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a dict (e.g. ``config.json``), ignoring keys that are not settings."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "eval_ks" in kw:
            kw["eval_ks"] = tuple(kw["eval_ks"])
        return cls(**kw)

    def validate(self, num_labels: int | None = None, num_train: int | None = None,
                 custom_model: bool = False, given: Collection[str] = ()) -> "TrainConfig":
        """Check every setting; raise ``ValueError`` naming the value and the allowed range.

        Checks that need the data (``negatives < L``, ``nprobe <= clusters <= L``, eval k <= L,
        ``refreshes_per_epoch <= steps per epoch``) run when ``num_labels`` / ``num_train`` are
        given.  ``custom_model``: a model object is supplied, so ``model`` is not checked.
        ``given``: the settings set explicitly (``xmcviz train`` passes its flags); those the
        run would not read are refused (a sampler setting outside the chosen sampler's
        ``options``, a setting outside its ``only_with``).  Without it, such settings are
        allowed and unused, so that one dict of settings can serve a grid over samplers.
        """
        if not custom_model:
            check_choice("model", self.model, MODEL_NAMES)
        check_int("hidden", self.hidden, 1)
        check_float("dropout", self.dropout, 0.0, 1.0, high_inclusive=False)
        check_choice("sampler", self.sampler, SAMPLER_NAMES)
        self._refuse_unread(given)
        check_float("eta_ratio", self.eta_ratio, 0.0, low_inclusive=False)
        check_run_settings(self)
        check_float("hide_labels", self.hide_labels, 0.0, 1.0, high_inclusive=False)
        check_int("warmup_epochs", self.warmup_epochs, 0, self.epochs)
        for name in ("checkpoint_every_steps", "refresh_every", "refreshes_per_epoch",
                     "eval_rows"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        if self.refresh_every is not None and self.refreshes_per_epoch is not None:
            raise ValueError(f"refresh_every={self.refresh_every} and refreshes_per_epoch="
                             f"{self.refreshes_per_epoch} both set: give at most one")
        ks = tuple(self.eval_ks) if isinstance(self.eval_ks, (list, tuple)) else ()
        if not ks:
            raise ValueError(f"eval_ks={self.eval_ks!r} is not supported: allowed a non-empty "
                             f"list of integers >= 1")
        for k in ks:
            check_int("eval k", k, 1, num_labels)
        for name in ("propensity_a", "propensity_b"):
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name), 0.0)

        L = num_labels
        uses_negatives = self.sampler != "full"
        if uses_negatives:
            check_int("negatives", self.negatives, 1, None if L is None else L - 1)
        if self.mips_k is not None:
            check_int("mips_k", self.mips_k, 1, self.negatives if uses_negatives else L)
        if self.clusters is not None:
            check_int("clusters", self.clusters, 1, L)
        if self.nprobe is not None:
            K = self.clusters if self.clusters is not None else (
                None if L is None else default_clusters(L))
            check_int("nprobe", self.nprobe, 1, K)
        if self.meta_clusters is not None:
            check_int("meta_clusters", self.meta_clusters, 2, L)
        if self.meta_topk is not None:
            K = self.meta_clusters if self.meta_clusters is not None else (
                None if L is None else default_meta_clusters(L))
            check_int("meta_topk", self.meta_topk, 1, K)
        check_float("meta_loss_weight", self.meta_loss_weight, 0.0, low_inclusive=False)
        if self.refreshes_per_epoch is not None and num_train is not None:
            check_int("refreshes_per_epoch", self.refreshes_per_epoch, 1,
                      steps_per_epoch(num_train, self.batch_size))
        return self

    def _refuse_unread(self, given: Collection[str]) -> None:
        """Refuse settings in ``given`` that this run would not read (see :meth:`validate`)."""
        unread = []
        for f in fields(self):
            if f.name not in given:
                continue
            where = dict(f.metadata.get("only_with") or {})
            if f.metadata.get("group") == SAMPLING:
                where["sampler"] = samplers_reading(f.name)
            unread += [f"{f.name}={getattr(self, f.name)!r} not supported with {k}="
                       f"{getattr(self, k)!r}: allowed with {k} {' or '.join(v) or '(none)'}"
                       for k, v in where.items() if getattr(self, k) not in v]
        if unread:
            raise ValueError("; ".join(unread))

def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    return max(1, -(-int(num_rows) // int(batch_size)))


def check_run_settings(config: Any) -> None:
    """The checks every trainer's config shares (the settings the loop of
    :mod:`xmcviz.core.loop` reads): ``lr``, ``batch_size``, ``epochs``, ``seed``,
    ``data_seed``, ``eval_batch_size``, ``eval_every_steps``, ``device`` and the data source
    (``data``, or ``train`` and ``test``); ``ValueError`` naming the value and the range."""
    check_float("lr", config.lr, 0.0, low_inclusive=False)
    check_int("batch_size", config.batch_size, 1)
    check_int("epochs", config.epochs, 1)
    check_int("seed", config.seed, 0)
    check_int("data_seed", config.data_seed, 0)
    check_int("eval_batch_size", config.eval_batch_size, 1)
    if config.eval_every_steps is not None:
        check_int("eval_every_steps", config.eval_every_steps, 1)
    resolve_device(config.device)
    if config.data is not None and (config.train is not None or config.test is not None):
        raise ValueError(f"data={config.data!r} and train/test files both set: give one")
    if config.data is None and (config.train is None) != (config.test is None):
        raise ValueError(f"train={config.train!r}, test={config.test!r}: give both files")
