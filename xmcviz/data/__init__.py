"""Datasets for xmcviz: read XMC benchmark files, or generate synthetic data.

>>> from xmcviz import data
>>> ds = data.resolve("synthetic:tiny")          # or data.synthetic("tiny", seed=0)
>>> ds = data.load("path/to/Eurlex")            # a folder with a train/test pair
>>> ds = data.load(train="a/train.txt", test="a/test.txt")

Files in the Extreme Classification Repository's text format and Mulan's ARFF format are
read (see :mod:`xmcviz.data.xc_format`, :mod:`xmcviz.data.arff`); a parsed pair is cached
as ``.xmcviz-cache.npz`` (see :mod:`xmcviz.data.cache`). Note that ``xmcviz.data.synthetic``
is the *function* below; the generator module is reached as
``from xmcviz.data.synthetic import generate, PRESETS``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from . import arff as _arff
from . import cache as _cache
from . import registry as _registry
from . import synthetic as _synthetic_module
from . import xc_format
from ..validation import check_int
from .dataset import Dataset
from .errors import DataFormatError
from .registry import benchmarks, propensity_constants

__all__ = ["Dataset", "DataFormatError", "PRESETS", "benchmarks", "find_pair", "load",
           "propensity_constants", "resolve", "synthetic"]

#: Names of the synthetic presets, for ``synthetic(NAME)`` and ``resolve("synthetic:NAME")``.
PRESETS: tuple[str, ...] = _synthetic_module.PRESET_NAMES

# (train pattern, test pattern) tried in this order in a folder; '*' is any prefix.
_PAIR_PATTERNS: tuple[tuple[str, str], ...] = (
    ("train.txt", "test.txt"),
    ("trn.txt", "tst.txt"),
    ("*_train.txt", "*_test.txt"),
    ("*-train.txt", "*-test.txt"),
    ("*_trn.txt", "*_tst.txt"),
    ("*-train.arff", "*-test.arff"),
    ("*_train.arff", "*_test.arff"),
    ("train.arff", "test.arff"),
)
_GENERIC_FOLDERS = {"xc", "bow", "data", "bow-features", "txt", "arff"}


def find_pair(path: str | os.PathLike) -> tuple[Path, Path]:
    """The (train, test) files of a dataset folder, or of a train (or test) file.

    In a folder the names tried are, in order: ``train.txt``/``test.txt``,
    ``trn.txt``/``tst.txt``, ``NAME_train.txt``/``NAME_test.txt`` (also ``-train``,
    ``_trn``/``_tst``), and Mulan's ``NAME-train.arff``/``NAME-test.arff``. For a file, its
    partner swaps ``train`` and ``test`` (``trn`` and ``tst``) in the name.
    Raises ``FileNotFoundError`` when there is no such pair, ``ValueError`` when several.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for tr_pat, te_pat in _PAIR_PATTERNS:
            if "*" not in tr_pat:
                if (path / tr_pat).is_file() and (path / te_pat).is_file():
                    return path / tr_pat, path / te_pat
                continue
            tr_suffix, te_suffix = tr_pat[1:], te_pat[1:]
            pairs = [(f, f.with_name(f.name[: -len(tr_suffix)] + te_suffix))
                     for f in sorted(path.glob(tr_pat)) if f.is_file()]
            pairs = [(a, b) for a, b in pairs if b.is_file()]
            if len(pairs) > 1:
                raise ValueError(f"{path} holds several train/test pairs "
                                 f"({', '.join(a.name for a, _ in pairs)}): pass train= and test=")
            if pairs:
                return pairs[0]
        looked = ", ".join(f"{a}/{b}" for a, b in _PAIR_PATTERNS)
        raise FileNotFoundError(f"no train/test pair in {path}: looked for {looked}")
    if path.is_file():
        for a, b in (("train", "test"), ("trn", "tst")):
            for src, dst, is_train in ((a, b, True), (b, a, False)):
                m = list(re.finditer(src, path.name, flags=re.I))
                if not m:
                    continue
                s, e = m[-1].span()
                name = path.name
                other = path.with_name(name[:s] + _same_case(name[s:e], dst) + name[e:])
                if other.is_file():
                    return (path, other) if is_train else (other, path)
        raise FileNotFoundError(f"{path} has no test (or train) partner beside it: "
                                "pass train= and test=")
    raise FileNotFoundError(f"no such file or folder: {path}")


def _same_case(model: str, word: str) -> str:
    return word.upper() if model.isupper() else word.capitalize() if model[0].isupper() else word


def _is_arff(path: Path) -> bool:
    if path.suffix.lower() == ".arff":
        return True
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith((b"%", b"@"))  # an XC file starts with its "N D L" header


def _default_name(train: Path) -> str:
    stem = re.sub(r"[-_.]?(train|trn)$", "", train.stem, flags=re.I)
    if stem and stem.lower() not in {"train", "trn"}:
        return stem
    folder = train.resolve().parent
    if folder.name.lower() in _GENERIC_FOLDERS and folder.parent.name:
        return folder.parent.name
    return folder.name or "dataset"


def _read_pair(train: Path, test: Path, fmt: str, num_labels: int | None,
               xml: Path | None, name: str) -> Dataset:
    if fmt == "xc":
        h_tr, h_te = xc_format.read_xc_header(train), xc_format.read_xc_header(test)
        if h_tr[1:] != h_te[1:]:
            raise DataFormatError(test, 1, f"header has {h_te[1]} features and {h_te[2]} labels "
                                           f"but {train} has {h_tr[1]} and {h_tr[2]}: train and "
                                           "test must agree")
        if num_labels is not None and num_labels != h_tr[2]:
            raise DataFormatError(train, 1, f"header has {h_tr[2]} labels but "
                                            f"num_labels={num_labels}")
        a, b = xc_format.read_xc(train), xc_format.read_xc(test)
        label_names = None
    else:
        a = _arff.read_arff(train, num_labels=num_labels, xml=xml)
        b = _arff.read_arff(test, num_labels=num_labels, xml=xml)
        names_a = [x.name for x in a.attributes]
        names_b = [x.name for x in b.attributes]
        if names_a != names_b:
            i = next((k for k, (u, v) in enumerate(zip(names_a, names_b)) if u != v), None)
            if i is not None:
                line, what = b.attributes[i].line, (f"attribute {i} is {names_b[i]!r} but "
                                                    f"{names_a[i]!r} in {train}")
            else:
                line, what = b.data_line, f"{len(names_b)} attributes but {train} has {len(names_a)}"
            raise DataFormatError(test, line, f"{what}: train and test must agree")
        label_names = a.label_names
    a_, b_ = propensity_constants(name)
    meta = {"format": fmt, "train_file": str(train), "test_file": str(test),
            "xml_file": str(xml) if xml else None, "propensity": {"A": a_, "B": b_}}
    return Dataset(X_train=a.X, Y_train=a.Y, X_test=b.X, Y_test=b.Y, name=name,
                   label_names=label_names, meta=meta)


def load(path: str | os.PathLike | None = None, *, train: str | os.PathLike | None = None,
         test: str | os.PathLike | None = None, num_labels: int | None = None, cache: bool = True,
         cache_dir: str | os.PathLike | None = None, name: str | None = None) -> Dataset:
    """Read a train/test pair of dataset files into a :class:`Dataset`.

    Either ``path`` (a dataset folder, or one file of the pair: see :func:`find_pair`) or
    both ``train`` and ``test``. Files in the Extreme Classification Repository's text
    format and Mulan ARFF files (``.arff``, labels from the ``.xml`` beside them or the
    last ``num_labels`` attributes) are read; both files must agree on features and labels.

    ``X_*`` are float32 CSR, ``Y_*`` binary float32 CSR, sorted indices, no duplicates.
    The parsed pair is cached (``cache=False`` to skip) as ``*.xmcviz-cache.npz`` beside
    the files, in ``cache_dir``, or in ``$XMCVIZ_CACHE_DIR`` (see :mod:`xmcviz.data.cache`);
    a changed file invalidates it. ``name`` defaults to the files' or folder's name.
    ``meta["propensity"]`` holds the ``{"A", "B"}`` constants for that name
    (:func:`propensity_constants`).

    Raises ``DataFormatError`` ("FILE:LINE: what") for malformed files,
    ``FileNotFoundError`` for missing ones, ``ValueError`` for bad arguments.
    """
    if path is not None:
        if train is not None or test is not None:
            raise ValueError("pass either path or train= and test=, not both")
        train_p, test_p = find_pair(path)
    else:
        if train is None or test is None:
            raise ValueError("pass a dataset folder or file as path, or both train= and test=")
        train_p, test_p = Path(train).expanduser(), Path(test).expanduser()
        for p in (train_p, test_p):
            if not p.is_file():
                raise FileNotFoundError(f"no such file: {p}")
    if num_labels is not None:
        num_labels = check_int("num_labels", num_labels, 1)
    fmt_tr = "arff" if _is_arff(train_p) else "xc"
    fmt_te = "arff" if _is_arff(test_p) else "xc"
    if fmt_tr != fmt_te:
        raise ValueError(f"{train_p} is {fmt_tr} but {test_p} is {fmt_te}: "
                         "both must have the same format")
    xml = _arff.find_mulan_xml(train_p) if fmt_tr == "arff" else None
    ds_name = name or _default_name(train_p)
    sources = [train_p, test_p] + ([xml] if xml else [])
    return _cache.cached(
        sources,
        lambda: _read_pair(train_p, test_p, fmt_tr, num_labels, xml, ds_name),
        enabled=cache, cache_dir=cache_dir,
        extra={"num_labels": num_labels, "name": ds_name},
    )


def synthetic(name_or_params: str | Mapping[str, Any], seed: int = 0) -> Dataset:
    """A synthetic dataset: a preset name (see ``PRESETS``) or a dict of generator parameters.

    Deterministic in ``seed``. Parameters and the generative model are described in
    :mod:`xmcviz.data.synthetic` (``n_train, n_test, num_features, num_labels,
    num_clusters, mean_labels, zipf_exponent, words_per_row, ...``); bad values raise
    ``ValueError`` naming the value and its allowed range.
    """
    return _synthetic_module.generate(name_or_params, seed)


def resolve(spec: str | os.PathLike | Dataset, seed: int = 0, **load_kwargs: Any) -> Dataset:
    """A dataset from a short spec, as used by configs, notebooks and the CLI.

    ``"synthetic:NAME"`` or a bare preset name -> :func:`synthetic` with ``seed``;
    a folder or a file -> :func:`load` (``load_kwargs`` such as ``cache_dir`` are passed on).
    A ``Dataset`` is returned as is. A benchmark name that is not a local path (e.g.
    ``"Eurlex-4K"``) raises ``FileNotFoundError`` saying where to download it.
    """
    if isinstance(spec, Dataset):
        return spec
    s = str(spec)
    if s.startswith("synthetic:"):
        return synthetic(s[len("synthetic:"):], seed)
    if s in PRESETS:
        return synthetic(s, seed)
    p = Path(s).expanduser()
    if p.exists():
        return load(p, **load_kwargs)
    entry = _registry.benchmark(s)
    if entry is not None:
        raise FileNotFoundError(f"{s!r} is the {entry['name']} benchmark, which is not bundled. "
                                f"{entry['how_to_get']}")
    raise ValueError(f"cannot resolve dataset {s!r}: expected 'synthetic:NAME' or a preset name "
                     f"(NAME in {list(PRESETS)}), or an existing folder or file")
