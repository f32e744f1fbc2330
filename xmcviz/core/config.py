"""TrainConfig: every setting of a training run, validated up front (one place to add one).

Each setting is a dataclass field; ``validate`` checks it and names the bad value and the allowed
range.  ``resolve_device`` and ``steps_per_epoch`` are the two derived quantities the checks need.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from ..samplers.faiss_index import default_clusters  # K's default, shared with the samplers
from ..validation import check_choice, check_float, check_int
from .models import MODEL_NAMES

__all__ = ["TrainConfig", "resolve_device", "steps_per_epoch", "sampler_names"]


def sampler_names() -> tuple[str, ...]:
    """Names accepted by ``make_sampler``, read at call time (``register_sampler`` adds some)."""
    from .. import samplers
    return tuple(samplers.SAMPLER_NAMES)


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
    """Every setting of a training run (written to ``config.json``).

    Data: ``data`` (a spec for :func:`xmcviz.data.resolve`: ``synthetic:NAME``, a preset name,
    a directory or a file) or ``train`` + ``test`` files; ``data_seed`` seeds synthetic data.
    Model: ``model`` (``linear`` / ``mlp``), ``hidden``, ``dropout``, ``label_bias``.
    Sampler: ``sampler``, ``negatives`` (R), ``mips_k`` (k), ``clusters`` (K), ``nprobe`` (tau),
    ``refresh_every`` (P steps) or ``refreshes_per_epoch`` (PPE), ``warmup_epochs``.
    Optimisation: ``eta_ratio`` (eta+/eta-), ``lr``, ``batch_size``, ``epochs``, ``seed``,
    ``sparse_updates`` (SparseAdam on label rows; False: dense Adam on everything).
    Evaluation: ``eval_every_steps`` (besides every epoch), ``eval_ks``, ``eval_batch_size``,
    ``propensity_a`` / ``propensity_b`` (None: from the dataset's meta, else 0.55 / 1.5).
    Run: ``device`` (``auto`` = CUDA when present), ``out`` (None: nothing written),
    ``checkpoint_every_steps`` (besides every epoch), ``resume``, ``overwrite``, ``progress``.
    ``None`` for a sampler setting means the sampler's default.
    """

    data: str | None = None
    train: str | None = None
    test: str | None = None
    data_seed: int = 0
    model: str = "mlp"
    hidden: int = 128
    dropout: float = 0.2
    label_bias: bool = False
    sampler: str = "uniform"
    negatives: int = 100
    mips_k: int | None = None
    clusters: int | None = None
    nprobe: int | None = None
    refresh_every: int | None = None
    refreshes_per_epoch: int | None = None
    warmup_epochs: int = 0
    eta_ratio: float = 1.0
    lr: float = 1e-2  # Adam; at 1e-3 the mlp stays near the label prior for epochs
    batch_size: int = 256
    epochs: int = 5
    seed: int = 0
    device: str = "auto"
    sparse_updates: bool = True
    eval_every_steps: int | None = None
    eval_ks: tuple[int, ...] = (1, 3, 5)
    eval_batch_size: int = 1024
    propensity_a: float | None = None
    propensity_b: float | None = None
    checkpoint_every_steps: int | None = None
    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

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
                 custom_model: bool = False) -> "TrainConfig":
        """Check every setting; raise ``ValueError`` naming the value and the allowed range.

        Checks that need the data (``negatives < L``, ``nprobe <= clusters <= L``, eval k <= L,
        ``refreshes_per_epoch <= steps per epoch``) run when ``num_labels`` / ``num_train`` are
        given.  ``custom_model``: a model object is supplied, so ``model`` is not checked.
        """
        if not custom_model:
            check_choice("model", self.model, MODEL_NAMES)
        check_int("hidden", self.hidden, 1)
        check_float("dropout", self.dropout, 0.0, 1.0, high_inclusive=False)
        check_choice("sampler", self.sampler, sampler_names())
        check_float("eta_ratio", self.eta_ratio, 0.0, low_inclusive=False)
        check_float("lr", self.lr, 0.0, low_inclusive=False)
        check_int("batch_size", self.batch_size, 1)
        check_int("epochs", self.epochs, 1)
        check_int("seed", self.seed, 0)
        check_int("data_seed", self.data_seed, 0)
        check_int("warmup_epochs", self.warmup_epochs, 0, self.epochs)
        check_int("eval_batch_size", self.eval_batch_size, 1)
        for name in ("eval_every_steps", "checkpoint_every_steps", "refresh_every",
                     "refreshes_per_epoch"):
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
        resolve_device(self.device)
        if self.data is None and (self.train is None or self.test is None):
            if self.train is not None or self.test is not None:
                raise ValueError(f"train={self.train!r}, test={self.test!r}: give both files")
        if self.data is not None and (self.train is not None or self.test is not None):
            raise ValueError(f"data={self.data!r} and train/test files both set: give one")

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
        if self.refreshes_per_epoch is not None and num_train is not None:
            check_int("refreshes_per_epoch", self.refreshes_per_epoch, 1,
                      steps_per_epoch(num_train, self.batch_size))
        return self


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    return max(1, -(-int(num_rows) // int(batch_size)))
