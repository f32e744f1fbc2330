"""The training core: models, the sampled loss, the optimiser, the trainer loop, evaluation and
the run directory.  It imports data, samplers and hooks, never the notebook layer.

``from xmcviz.core import Trainer, TrainConfig`` is the usual entry point.  The names are
resolved lazily: samplers and hooks import ``xmcviz.core.topk`` / ``rundir`` themselves, so
importing the trainer here eagerly would be circular.
"""
__all__ = ["TrainConfig", "Trainer", "TrainingDiverged"]


def __getattr__(name: str):
    if name in __all__:
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module 'xmcviz.core' has no attribute {name!r}")
