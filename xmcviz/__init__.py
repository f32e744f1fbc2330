"""xmcviz: instruments for hard-negative sampling in extreme multi-label classification.

Entry points: ``xmcviz.data`` (datasets), ``xmcviz.core.trainer`` (``Trainer``, ``TrainConfig``)
and ``xmcviz.samplers`` (training), ``xmcviz.hooks`` (instruments), ``xmcviz.load_run`` (read a run),
``xmcviz.notebook.plots`` (figures).
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import xmcviz` stays cheap (no pandas/plotly/faiss until needed).
    if name in ("load_run", "Run"):
        from .core import run_reader as runs
        return getattr(runs, name)
    raise AttributeError(f"module 'xmcviz' has no attribute {name!r}")
