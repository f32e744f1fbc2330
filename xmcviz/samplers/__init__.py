"""Negative samplers and the name -> sampler registry.

``make_sampler("mips-s", num_labels=L, num_negatives=R, mips_k=5)`` builds a
sampler from the names used in configs and notebooks.  To add a sampler,
write a factory ``f(cfg: SamplerConfig) -> NegativeSampler`` and put it in
``SAMPLER_FACTORIES`` (or call :func:`register_sampler`); if it needs new
settings, add fields to :class:`SamplerConfig` and parameters to
:func:`make_sampler`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..validation import check_int
from .base import (SOURCE_ADVERSARIAL, SOURCE_ALL, SOURCE_EXACT, SOURCE_FREQUENCY, SOURCE_MIPS,
                   SOURCE_NAMES, SOURCE_UNIFORM, Negatives, NegativeSampler, Positives)
from .faiss_index import MipsIndex, default_clusters, faiss_has_gpu
from .frequency import FrequencySampler
from .full import FullSampler
from .mips import MipsSampler, default_nprobe
from .mixed import TopUniformSampler
from .top import TopSampler
from .uniform import UniformSampler
from .warmup import WarmupSampler

DEFAULT_MIPS_K = 5  # ~ the average number of positives per row (the paper's k)


@dataclass(frozen=True)
class SamplerConfig:
    """Everything :func:`make_sampler` was given; factories take what they need."""

    num_labels: int
    num_negatives: int
    label_freq: Any = None
    mips_k: int | None = None
    clusters: int | None = None
    nprobe: int | None = None
    refresh_every: int | None = None
    refreshes_per_epoch: int | None = None
    seed: int = 0
    dataset: Any = None  # the training data (X_train, Y_train), for samplers fitted on it
    device: Any = "cpu"
    state: dict | None = None  # a checkpointed state_dict: fitted samplers are rebuilt from it


def _mips(cfg: SamplerConfig, k: int) -> MipsSampler:
    return MipsSampler(cfg.num_labels, cfg.num_negatives, k, clusters=cfg.clusters, nprobe=cfg.nprobe,
                       refresh_every=cfg.refresh_every, refreshes_per_epoch=cfg.refreshes_per_epoch,
                       seed=cfg.seed)


def _frequency(cfg: SamplerConfig) -> FrequencySampler:
    if cfg.label_freq is None:
        raise ValueError("sampler 'frequency' needs label_freq (training label counts, length num_labels)")
    return FrequencySampler(cfg.num_labels, cfg.num_negatives, cfg.label_freq)


def _adversarial(cfg: SamplerConfig) -> NegativeSampler:
    if cfg.dataset is None:
        raise ValueError("sampler 'adversarial' needs dataset= (its X_train, Y_train fit the tree p_n)")
    from .adversarial.sampler import AdversarialSampler, fit_adversarial_sampler
    if cfg.state is not None:  # resuming: the checkpoint's PCA + tree, no refit
        return AdversarialSampler.from_state_dict(cfg.state, cfg.dataset.X_train, device=cfg.device)
    # Fits PCA + label tree on the training data.
    return fit_adversarial_sampler(cfg.dataset.X_train, cfg.dataset.Y_train, cfg.num_negatives,
                                   seed=cfg.seed, device=cfg.device)


def _k(cfg: SamplerConfig) -> int:
    return DEFAULT_MIPS_K if cfg.mips_k is None else cfg.mips_k


SAMPLER_FACTORIES: dict[str, Callable[[SamplerConfig], NegativeSampler]] = {
    "full": lambda cfg: FullSampler(cfg.num_labels),
    "uniform": lambda cfg: UniformSampler(cfg.num_labels, cfg.num_negatives),
    "frequency": _frequency,
    "top": lambda cfg: TopSampler(cfg.num_labels, cfg.num_negatives),
    "top-uniform": lambda cfg: TopUniformSampler(cfg.num_labels, cfg.num_negatives, _k(cfg)),
    "mips-a": lambda cfg: _mips(cfg, cfg.num_negatives),  # k = R: every negative from MIPS
    "mips-s": lambda cfg: _mips(cfg, _k(cfg)),
    "adversarial": _adversarial,
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLER_FACTORIES)


def register_sampler(name: str, factory: Callable[[SamplerConfig], NegativeSampler]) -> None:
    """Add (or replace) a sampler name; ``SAMPLER_NAMES`` is updated."""
    global SAMPLER_NAMES
    SAMPLER_FACTORIES[name] = factory
    SAMPLER_NAMES = tuple(SAMPLER_FACTORIES)


def make_sampler(name: str, *, num_labels: int, num_negatives: int, label_freq=None,
                 mips_k: int | None = None, clusters: int | None = None, nprobe: int | None = None,
                 refresh_every: int | None = None, refreshes_per_epoch: int | None = None,
                 warmup_epochs: int = 0, seed: int = 0, dataset=None,
                 device="cpu", state: dict | None = None) -> NegativeSampler:
    """Build the sampler ``name`` (one of :data:`SAMPLER_NAMES`).

    ``mips_k``: k for ``mips-s`` and ``top-uniform`` (default 5, in [1, R]);
    ``mips-a`` uses k = R and ignores it.  ``clusters`` K defaults to
    round(sqrt(L)), ``nprobe`` to min(16, K) (see
    :func:`~xmcviz.samplers.mips.default_nprobe`).  Exactly one of
    ``refresh_every`` / ``refreshes_per_epoch`` may be given (default: one
    refresh per epoch).  ``warmup_epochs`` > 0 wraps the sampler in
    :class:`WarmupSampler` (uniform negatives first).  ``seed`` seeds the
    k-means of the MIPS index; sampling randomness comes from the generator
    passed to ``sample``.  ``dataset`` (with ``X_train``, ``Y_train``) and ``device`` are for
    samplers fitted on the training data (``adversarial``: PCA + label tree, seeded by ``seed``).
    ``state``: the ``state_dict()`` of a sampler built with the same settings (a checkpoint's);
    samplers fitted on the training data are rebuilt from it instead of refitted, the others
    ignore it (their ``load_state_dict`` restores them).
    Settings a sampler has no use for are ignored.
    """
    if name not in SAMPLER_FACTORIES:
        raise ValueError(f"unknown sampler {name!r}: allowed {', '.join(SAMPLER_NAMES)}")
    L = check_int("num_labels", num_labels, 2)
    if name != "full":  # the full loss has no R
        check_int("num_negatives", num_negatives, 1, L - 1)
    warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
    if state is not None and warmup_epochs > 0:
        state = state["inner"]  # WarmupSampler.state_dict nests the wrapped sampler's
    cfg = SamplerConfig(L, int(num_negatives), label_freq, mips_k, clusters, nprobe,
                        refresh_every, refreshes_per_epoch, check_int("seed", seed, 0),
                        dataset, device, state)
    sampler = SAMPLER_FACTORIES[name](cfg)
    sampler.name = name
    if warmup_epochs > 0:
        sampler = WarmupSampler(sampler, warmup_epochs)
    return sampler


__all__ = [
    "SAMPLER_NAMES", "SAMPLER_FACTORIES", "SamplerConfig", "make_sampler", "register_sampler",
    "NegativeSampler", "Positives", "Negatives", "SOURCE_UNIFORM", "SOURCE_FREQUENCY", "SOURCE_EXACT",
    "SOURCE_MIPS", "SOURCE_ADVERSARIAL", "SOURCE_ALL", "SOURCE_NAMES", "UniformSampler",
    "FrequencySampler", "TopSampler", "TopUniformSampler", "MipsSampler", "MipsIndex",
    "WarmupSampler", "FullSampler", "default_clusters", "default_nprobe", "faiss_has_gpu",
]
