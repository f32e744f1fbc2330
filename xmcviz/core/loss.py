"""Binary cross-entropy over the positives and the sampled negatives.

Per row (docs/background.md, section "Loss")::

    l = eta_ratio * sum_{j pos} softplus(-f_j)  +  sum_{j in N_hat} softplus(f_j)

(``softplus(-f) = -log sigma(f)``, ``softplus(f) = -log(1 - sigma(f))``), averaged over the
rows of the batch.  ``eta_ratio = eta+ / eta-`` weights the positive part, which with a single
optimiser is the same as separate step sizes for the two parts.  Entries whose mask is False
(padding, duplicates, unfilled slots) are left out.  The full loss is the ``full`` sampler:
its negatives are every label with the positives masked, through the same code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..samplers.base import Negatives, Positives
from ..validation import check_float

__all__ = ["sampled_bce", "LossOutput", "model_loss"]


def sampled_bce(pos_scores: torch.Tensor, pos_mask: torch.Tensor, neg_scores: torch.Tensor,
                neg_mask: torch.Tensor, eta_ratio: float = 1.0) -> torch.Tensor:
    """Mean over rows of the masked BCE of positives ``[B, P]`` and negatives ``[B, R]``."""
    eta_ratio = check_float("eta_ratio", eta_ratio, 0.0, low_inclusive=False)
    # where() rather than a product with the mask: a masked inf score must not give 0 * inf.
    zero = pos_scores.new_zeros(())
    pos = torch.where(pos_mask, F.softplus(-pos_scores), zero).sum(1)
    neg = torch.where(neg_mask, F.softplus(neg_scores), zero).sum(1)
    return (eta_ratio * pos + neg).mean()


@dataclass
class LossOutput:
    """The loss of a batch and the scores it was computed from (``[B, P]``, ``[B, R]``)."""

    loss: torch.Tensor
    pos_scores: torch.Tensor
    neg_scores: torch.Tensor


def model_loss(model, emb: torch.Tensor, positives: Positives, negatives: Negatives,
               eta_ratio: float = 1.0, path: str = "auto") -> LossOutput:
    """Score positives and negatives with ``model.score`` in one call and take the BCE.

    One call (ids ``[B, P + R]``) so the unique-ids path gathers each label row once even
    when it is a positive of one row and a negative of another.  Masked entries are scored
    without gradient (see :meth:`xmcviz.core.models.XMCModel.score`), so only the rows of ``W``
    that enter the loss get a gradient.
    """
    P = positives.ids.shape[1]
    ids = torch.cat([positives.ids, negatives.ids], 1)
    mask = torch.cat([positives.mask, negatives.mask], 1)
    scores = model.score(emb, ids, mask=mask, path=path)
    pos_s, neg_s = scores[:, :P], scores[:, P:]
    loss = sampled_bce(pos_s, positives.mask, neg_s, negatives.mask, eta_ratio)
    return LossOutput(loss, pos_s, neg_s)
