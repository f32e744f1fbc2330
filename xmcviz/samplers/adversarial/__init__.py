"""Auxiliary model of the adversarial sampler (Bamler & Mandt, ICLR 2020).

``pca`` projects sparse inputs to k dims; ``tree`` is the balanced label tree
p_n(y|x) (fit, log-probabilities, ancestral sampling).  The sampler itself is
``xmcviz.samplers.adversarial.sampler``.  ``bias`` ranks by score + log p_n (bias removal in
the multi-label trainer); ``proposals`` are the q(y|x) of the first-label softmax
setting (:mod:`xmcviz.softmax.trainer`); ``snr`` compares their gradient signal-to-noise.
The fit-time benchmark is ``benchmarks/adversarial_fit.py``.
"""
from .pca import SparsePCA
from .tree import LabelTree, fit_label_tree, newton_step, training_pairs
from .sampler import AdversarialSampler, fit_adversarial_sampler

__all__ = ["AdversarialSampler", "fit_adversarial_sampler", "SparsePCA", "LabelTree", "fit_label_tree", "newton_step", "training_pairs"]
