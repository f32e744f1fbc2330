"""Read a run directory — finished, still running, or killed — into pandas."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..hooks.storage import read_jsonl, read_records
from ..samplers.base import SOURCE_NAMES


@dataclass
class Run:
    """A run directory's contents.

    ``config``: the run's settings (``config.json``).  ``metrics``: one row per
    evaluation (``metrics.jsonl``).  ``hooks``: tidy DataFrames keyed by hook
    name.  A hook with binary records (``ranks``, ``freq``, ``grad``) gives its
    records under its name (for ``ranks``: one row per logged negative with
    ``step``, ``epoch``, ``steps_since_refresh``, ``refresh_interval``,
    ``row``, ``label``, ``source``, ``rank``) and its per-step summaries under
    ``NAME_summary``; a hook with only scalar records (``staleness``) gives
    them under its name.  ``source`` columns hold names ("uniform", "mips", ...).
    """

    path: Path
    config: dict
    metrics: pd.DataFrame
    hooks: dict[str, pd.DataFrame] = field(default_factory=dict)

    def reload(self) -> "Run":
        """Read the directory again (e.g. while the run is still writing)."""
        return load_run(self.path)


def load_run(path: str | Path) -> Run:
    """Load ``path`` written by ``xmcviz train``; tolerant of a run killed mid-write."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    cfg_path = path / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    metrics = pd.DataFrame(read_jsonl(path / "metrics.jsonl"))
    hooks: dict[str, pd.DataFrame] = {}
    hdir = path / "hooks"
    if hdir.is_dir():
        for jl in sorted(hdir.glob("*.jsonl")):
            name = jl.stem
            summary = with_source_names(pd.DataFrame(read_jsonl(jl)))
            binary = hdir / f"{name}.bin"
            if binary.with_name(binary.name + ".json").exists():
                hooks[name] = with_source_names(pd.DataFrame(read_records(binary)))
                hooks[f"{name}_summary"] = summary
            else:
                hooks[name] = summary
    return Run(path=path, config=config, metrics=metrics, hooks=hooks)


def with_source_names(df: pd.DataFrame) -> pd.DataFrame:
    if "source" in df and pd.api.types.is_integer_dtype(df["source"]):
        df["source"] = pd.Categorical.from_codes(df["source"].astype(int), categories=list(SOURCE_NAMES))
    return df
