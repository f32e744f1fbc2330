"""The first-label softmax setting of Bamler & Mandt (2020): its trainer, the proposals q(y|x)
(adversarial tree, uniform, frequency, NCE), their gradient signal-to-noise ratio and figures."""
from .trainer import SOFTMAX_METHODS, SoftmaxConfig, SoftmaxTrainer

__all__ = ["SOFTMAX_METHODS", "SoftmaxConfig", "SoftmaxTrainer"]
