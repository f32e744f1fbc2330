"""The common interface of every negative sampler.

A sampler is asked, once per training step, for R negative label ids per row of
the batch.  Samplers that look at the model (``top``, ``mips-*``) keep a
snapshot of the label matrix ``W`` and are refreshed from the live one when
their schedule says so; the trainer drives this as::

    if sampler.refresh_due(step, epoch):
        info = sampler.refresh(model.W.detach(), step, epoch, bias=b)  # b: model.bias.detach() or None
    neg = sampler.sample(emb.detach(), positives, epoch=epoch, generator=gen)

Everything is batched tensor code on the device of ``emb``; nothing loops over
the rows of a batch in Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from ..validation import check_int

if TYPE_CHECKING:  # the config module imports the samplers' names, not the other way round
    from ..core.config import TrainConfig

# Where each negative came from (stored per negative as a uint8 code).
SOURCE_UNIFORM = 0
SOURCE_FREQUENCY = 1
SOURCE_EXACT = 2
SOURCE_MIPS = 3
SOURCE_ADVERSARIAL = 4
SOURCE_ALL = 5
SOURCE_META = 6
SOURCE_NAMES = ("uniform", "frequency", "exact", "mips", "adversarial", "all", "meta")

DEFAULT_K = 5  # hard negatives per row of mips-s / top-uniform: ~ the positives per row (the paper's k)


@dataclass(frozen=True)
class SamplerEnv:
    """What a sampler is built with besides the run's settings: facts of the data and the run.

    ``label_freq``: training label counts [L] (``frequency``); ``dataset``: the training data
    (``X_train``, ``Y_train``) of samplers fitted on it; ``state``: a checkpointed
    ``state_dict()`` from which fitted samplers are rebuilt instead of refitted.
    ``dim``: the width of the model's embedding (``meta``: its head reads the embedding).
    """

    num_labels: int
    label_freq: Any = None
    dataset: Any = None
    device: Any = "cpu"
    state: dict | None = None
    dim: int | None = None


@dataclass
class Positives:
    """The positive labels of a batch, padded to the longest row.

    ``ids``: int64 [B, P]; padded entries hold 0 and have ``mask`` False.
    """

    ids: torch.Tensor
    mask: torch.Tensor

    @property
    def max_count(self) -> int:
        return int(self.ids.shape[1])

    @classmethod
    def from_csr(cls, Y: sp.csr_matrix, rows: np.ndarray | torch.Tensor,
                 device: torch.device | str = "cpu") -> "Positives":
        """Gather the label rows ``rows`` of ``Y`` into a padded tensor (vectorised)."""
        rows = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows, dtype=np.int64)
        starts = Y.indptr[rows]
        counts = Y.indptr[rows + 1] - starts
        width = max(int(counts.max(initial=0)), 1)
        offs = np.arange(width)
        mask = offs[None, :] < counts[:, None]
        flat = np.where(mask, starts[:, None] + offs[None, :], 0)
        ids = np.where(mask, Y.indices[np.minimum(flat, max(len(Y.indices) - 1, 0))] if len(Y.indices) else 0, 0)
        return cls(torch.as_tensor(ids, dtype=torch.int64, device=device),
                   torch.as_tensor(mask, dtype=torch.bool, device=device))


@dataclass
class Negatives:
    """Sampled negatives of a batch.

    ``ids``: int64 [B, R] label ids.  ``mask``: bool [B, R], False for entries
    that must not enter the loss (a duplicate within the row, a slot that an
    approximate search could not fill); masked ids still hold a valid label id.
    ``source``: uint8 [B, R] with the ``SOURCE_*`` code of each negative.
    ``log_q``: optional float [B, R], log-probability of the proposal that drew
    each negative (used for bias removal by the adversarial sampler).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    source: torch.Tensor
    log_q: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.ids.shape[1])


class NegativeSampler:
    """Base class.  Subclasses implement :meth:`sample` and, if they depend on
    the model, :meth:`refresh_due` / :meth:`refresh`.

    Parameters are validated in ``__init__`` with ``ValueError`` messages that
    name the bad value and the allowed range (scikit-learn style).
    """

    name: str = "base"
    needs_model: bool = False  # True when sample() reads the (snapshot of the) model
    # The negative-sampling settings (TrainConfig fields) that from_config reads: given for
    # another sampler, they are refused (tests/test_config.py checks this against from_config).
    options: tuple[str, ...] = ("negatives",)

    @classmethod
    def from_config(cls, config: "TrainConfig", env: SamplerEnv) -> "NegativeSampler":
        """Build from a run's settings: of the negative-sampling ones, exactly :attr:`options`
        (general ones such as ``seed`` as needed)."""
        return cls(env.num_labels, config.negatives)

    def __init__(self, num_labels: int, num_negatives: int) -> None:
        check_int("num_labels", num_labels, 2)
        check_int("num_negatives", num_negatives, 1, num_labels - 1)
        self.num_labels = int(num_labels)
        self.num_negatives = int(num_negatives)
        self.steps_per_epoch: int | None = None
        self.last_refresh_step: int | None = None

    # -- schedule -------------------------------------------------------
    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Told by the trainer before training starts (refresh cadences need it)."""
        self.steps_per_epoch = int(steps_per_epoch)

    def refresh_due(self, step: int, epoch: int) -> bool:
        """Whether :meth:`refresh` must run before sampling at global ``step``."""
        return False

    def refresh(self, W: torch.Tensor, step: int, epoch: int, *,
                bias: torch.Tensor | None = None) -> dict:
        """Rebuild the sampler's view of the model from ``W`` ([L, d], detached)
        and, when the model has one, its label ``bias`` ([L], detached).

        Returns a JSON-able dict of what happened (timings, sizes) for hooks."""
        self.last_refresh_step = int(step)
        return {}

    def steps_since_refresh(self, step: int) -> int | None:
        return None if self.last_refresh_step is None else int(step - self.last_refresh_step)

    def refresh_interval(self) -> int | None:
        """Length in steps of the current refresh interval (None: never refreshes)."""
        return None

    # -- sampling -------------------------------------------------------
    def sample(self, emb: torch.Tensor, positives: Positives, *, epoch: int = 0,
               generator: torch.Generator | None = None, W: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> Negatives:
        """Draw ``num_negatives`` negatives per row of ``emb`` ([B, d], detached).

        ``W`` ([L, d]) and ``bias`` ([L] or None) are the live model's label
        weights (detached) for samplers that score exhaustively; ``rows`` are the
        batch's dataset row ids for samplers that look at raw inputs.  Positives
        are never returned unmasked."""
        raise NotImplementedError

    # -- a trainable part (meta: the cluster head), trained jointly with the model ----------
    def trainable(self) -> list[torch.nn.Parameter]:
        """The sampler's own parameters; the trainer optimises them with the model's lr."""
        return []

    def auxiliary_loss(self, emb: torch.Tensor, positives: Positives) -> torch.Tensor | None:
        """A loss added to the step's (``emb`` with gradient); None: nothing to add."""
        return None

    def eval_stats(self) -> dict:
        """Numbers logged with each evaluation (averages since the previous call)."""
        return {}

    # -- checkpointing --------------------------------------------------
    def state_dict(self) -> dict:
        return {"last_refresh_step": self.last_refresh_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_refresh_step = state.get("last_refresh_step")
