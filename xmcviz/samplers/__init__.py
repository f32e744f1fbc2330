"""Negative samplers, and how a run's settings become one.

:data:`SAMPLERS` maps each ``TrainConfig.sampler`` name to its class; :func:`build_sampler`
builds it with the class's ``from_config(config, env)`` and wraps it for the uniform warm-up.

To add a sampler: write a :class:`NegativeSampler` subclass with ``sample`` (and, if it looks
at the model, ``refresh_due`` / ``refresh``), a ``from_config`` classmethod that reads the
settings it needs, and ``options``, the names of the negative-sampling settings it reads; then
add it to :data:`SAMPLERS`.  To give a sampler a new setting: add a field to
:class:`~xmcviz.core.config.TrainConfig` (with its help and a check in ``validate``), read it
in the sampler's ``from_config`` and name it in its ``options``.  ``xmcviz train`` gets the
flag, and refuses it for samplers that do not read it, without further edits.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..validation import check_int
from .base import (DEFAULT_K, SOURCE_ADVERSARIAL, SOURCE_ALL, SOURCE_EXACT, SOURCE_FREQUENCY,
                   SOURCE_META, SOURCE_MIPS, SOURCE_NAMES, SOURCE_UNIFORM, Negatives, NegativeSampler,
                   Positives, SamplerEnv)
from .adversarial.sampler import AdversarialSampler
from .faiss_index import MipsIndex, default_clusters, faiss_has_gpu
from .frequency import FrequencySampler
from .full import FullSampler
from .meta import MetaSampler
from .mips import MipsAllSampler, MipsSampler, default_nprobe
from .mixed import TopUniformSampler
from .top import TopSampler
from .uniform import UniformSampler
from .warmup import WarmupSampler

if TYPE_CHECKING:
    from ..core.config import TrainConfig

SAMPLERS: dict[str, type[NegativeSampler]] = {
    "full": FullSampler,
    "uniform": UniformSampler,
    "frequency": FrequencySampler,
    "top": TopSampler,
    "top-uniform": TopUniformSampler,
    "mips-a": MipsAllSampler,
    "mips-s": MipsSampler,
    "adversarial": AdversarialSampler,
    "meta": MetaSampler,
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
# Negative-sampling settings that build_sampler itself reads, for every sampler.
COMMON_OPTIONS: tuple[str, ...] = ("sampler", "warmup_epochs")


def samplers_reading(option: str) -> tuple[str, ...]:
    """The sampler names whose ``from_config`` reads the setting ``option``."""
    if option in COMMON_OPTIONS:
        return SAMPLER_NAMES
    return tuple(n for n, cls in SAMPLERS.items() if option in cls.options)


def build_sampler(config: "TrainConfig", env: SamplerEnv) -> NegativeSampler:
    """The sampler ``config.sampler``, wrapped in :class:`WarmupSampler` when
    ``config.warmup_epochs > 0`` (uniform negatives first).

    ``config`` is assumed validated (:meth:`TrainConfig.validate`); the samplers check their
    own arguments too.  Settings a sampler does not read are ignored here (the CLI refuses
    them, see :meth:`TrainConfig.validate`'s ``given``).
    """
    if config.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {config.sampler!r}: allowed {', '.join(SAMPLER_NAMES)}")
    warmup = config.warmup_epochs
    if env.state is not None and warmup > 0:
        env = replace(env, state=env.state["inner"])  # WarmupSampler nests the wrapped state
    sampler = SAMPLERS[config.sampler].from_config(config, env)
    sampler.name = config.sampler
    return WarmupSampler(sampler, warmup) if warmup > 0 else sampler


def make_sampler(name: str, *, num_labels: int, num_negatives: int, label_freq: Any = None,
                 dataset: Any = None, device: Any = "cpu", state: dict | None = None,
                 dim: int | None = None, **settings: Any) -> NegativeSampler:
    """Shorthand for tests and notebooks: ``build_sampler`` of ``TrainConfig(sampler=name,
    negatives=num_negatives, **settings)``.

    ``settings`` are :class:`~xmcviz.core.config.TrainConfig` fields (``mips_k``, ``clusters``,
    ``nprobe``, ``refresh_every``, ``refreshes_per_epoch``, ``warmup_epochs``, ``seed``, ...);
    ``label_freq``, ``dataset``, ``device``, ``state``, ``dim`` are as in :class:`SamplerEnv`.
    """
    from ..core.config import TrainConfig
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: allowed {', '.join(SAMPLER_NAMES)}")
    # The samplers' constructors check their own arguments; these are the ones they do not see.
    L = check_int("num_labels", num_labels, 2)
    if name != "full":  # the full loss has no R
        check_int("num_negatives", num_negatives, 1, L - 1)
    config = TrainConfig(sampler=name, negatives=int(num_negatives), **settings)
    check_int("warmup_epochs", config.warmup_epochs, 0)
    check_int("seed", config.seed, 0)
    return build_sampler(config, SamplerEnv(L, label_freq, dataset, device, state, dim))


__all__ = [
    "SAMPLERS", "SAMPLER_NAMES", "COMMON_OPTIONS", "SamplerEnv", "build_sampler", "make_sampler",
    "samplers_reading", "NegativeSampler", "Positives", "Negatives", "SOURCE_UNIFORM",
    "SOURCE_FREQUENCY", "SOURCE_EXACT", "SOURCE_MIPS", "SOURCE_ADVERSARIAL", "SOURCE_ALL",
    "SOURCE_NAMES", "SOURCE_META", "MetaSampler", "DEFAULT_K", "UniformSampler", "FrequencySampler", "TopSampler",
    "TopUniformSampler", "MipsSampler", "MipsAllSampler", "AdversarialSampler", "MipsIndex",
    "WarmupSampler", "FullSampler", "default_clusters", "default_nprobe", "faiss_has_gpu",
]
