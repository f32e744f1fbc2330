"""Clustering-based approximate MIPS over a snapshot of the label matrix (faiss IVF).

The paper's pre-processing step: snapshot W^h <- W ([L, d], label rows),
cluster its rows with spherical k-means into K (default round(sqrt(L)))
clusters, and answer a query E by scoring the members of the ``nprobe`` (tau)
clusters whose centroids have the largest inner product with E.  In faiss
terms this is ``IndexIVFFlat(IndexFlatIP(d), d, K, METRIC_INNER_PRODUCT)``
(spherical k-means, unit-norm centroids).

Two ways to (re)build:

* :meth:`MipsIndex.build` (cold): k-means from random labels, ``niter``
  iterations, each a pass over all L label rows: the costly way at large L
  (refresh timings in ``benchmarks/RESULTS.md``).
* :meth:`MipsIndex.refresh` (warm): ``warm_iters`` k-means iterations started
  from the previous centroids (W moves little between refreshes, so the old
  partition is already nearly converged), then the inverted lists are rebuilt
  from the new snapshot.  Costs about (warm_iters + 1) passes over W instead of
  (niter + 1).

Label bias: with ``bias`` given, the index holds rows [w_j, b_j] and queries
are [E, 1], so inner products are E.w_j + b_j, the model's scores.  The
clustering then runs on the augmented rows (bias as one more direction).

Devices: when ``W`` is a CUDA tensor (or ``device``, the run's device, is CUDA) and faiss
has GPU support, the k-means assignments and the index live on that GPU (single GPU; faiss
caps k and nprobe at 2048 there: nprobe is clamped, and a wider k is padded with id -1).
A checkpointed index is rebuilt on ``device``, not on the device its snapshot was loaded to.
faiss's GPU calls run under ``torch.cuda.device(index device)``: faiss takes torch's stream
of the *current* device, so on ``cuda:N`` with N >= 1 that must be the index's own GPU.
When faiss is CPU-only, CUDA tensors are copied to the host for build and
search and results are returned on the caller's device; that copy is the
price of faiss-cpu on a GPU machine.  numpy and torch are never mixed in one
faiss call.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch

from ..validation import check_int

GPU_MAX_K = 2048  # faiss GPU k-selection limit (k and nprobe)


def _faiss():
    """Import faiss with its torch bindings (an optional dependency)."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (patches Index.add/search for tensors)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("MIPS samplers need faiss: pip install 'xmcviz[cpu]' (or '[gpu]')") from exc
    return faiss


def faiss_has_gpu() -> bool:
    """Whether the installed faiss can build GPU indexes on a visible GPU."""
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_clusters(num_labels: int) -> int:
    """K = round(sqrt(L)), the paper's choice (balanced clusters: query O(tau sqrt(L) d))."""
    return max(1, int(round(math.sqrt(num_labels))))


class MipsIndex:
    """Spherical k-means IVF index over a snapshot of label rows, with warm refresh.

    Parameters: ``clusters`` K (None: round(sqrt(L)) at build time),
    ``nprobe`` tau (clusters searched per query, in [1, K]), ``niter`` k-means
    iterations of a cold build, ``warm_iters`` iterations of a warm refresh
    (0: keep the centroids, only re-assign), ``seed`` for faiss's k-means
    (initial centroids), ``use_gpu`` (None: when W is on CUDA and faiss has a
    GPU; False: never; True: required), ``device`` (the run's device: where a checkpointed
    index is rebuilt, and with a CUDA device a CPU ``W`` is indexed on that GPU).

    After a build, ``last_build_seconds`` / ``last_build_kind`` ("cold" or
    "warm") / ``last_build_info`` report what it cost.
    """

    def __init__(self, clusters: int | None = None, nprobe: int = 16, *, niter: int = 10,
                 warm_iters: int = 1, seed: int = 0, use_gpu: bool | None = None,
                 device: torch.device | str | None = None) -> None:
        self.clusters = None if clusters is None else check_int("clusters", clusters, 1)
        self.nprobe = check_int("nprobe", nprobe, 1)
        self.niter = check_int("niter", niter, 1)
        self.warm_iters = check_int("warm_iters", warm_iters, 0)
        self.seed = check_int("seed", seed, 0)
        if use_gpu and not faiss_has_gpu():
            raise ValueError("use_gpu=True but faiss has no GPU support here (faiss-gpu and a visible GPU needed)")
        self.use_gpu = use_gpu
        self.device = None if device is None else torch.device(device)
        self._index = None
        self._centroids: np.ndarray | None = None  # float32 [K, d(+1)], unit rows
        self._snapshot: torch.Tensor | None = None  # float32 [L, d(+1)] on the index device
        self._gpu_res = None
        self._quantizer = None
        self.has_bias = False
        self.last_build_seconds: float | None = None
        self.last_build_kind: str | None = None
        self.last_build_info: dict = {}
        self.builds = 0

    # -- properties -----------------------------------------------------
    @property
    def is_built(self) -> bool:
        return self._index is not None

    @property
    def num_labels(self) -> int:
        return 0 if self._snapshot is None else int(self._snapshot.shape[0])

    @property
    def dim(self) -> int:
        """Dimension d of the label rows (without the bias column)."""
        return 0 if self._snapshot is None else int(self._snapshot.shape[1]) - int(self.has_bias)

    @property
    def on_gpu(self) -> bool:
        return self._snapshot is not None and self._snapshot.is_cuda

    @property
    def centroids(self) -> torch.Tensor:
        """The K unit-norm centroids, float32 [K, d] ([K, d + 1] with a bias)."""
        self._check_built()
        return torch.from_numpy(self._centroids.copy())

    @property
    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_h, bias_h)``: the label rows (and bias) the index was built from."""
        self._check_built()
        d = self.dim
        return self._snapshot[:, :d], (self._snapshot[:, d] if self.has_bias else None)

    def cluster_sizes(self) -> np.ndarray:
        """int64 [K]: labels per cluster (they sum to L: every label is indexed)."""
        self._check_built()
        K = self._centroids.shape[0]
        if self.on_gpu:
            return np.array([self._index.getListLength(i) for i in range(K)], dtype=np.int64)
        inv = self._index.invlists
        return np.array([inv.list_size(i) for i in range(K)], dtype=np.int64)

    # -- building -------------------------------------------------------
    def build(self, W: torch.Tensor, bias: torch.Tensor | None = None) -> dict:
        """Cold build: k-means from scratch (``niter`` iterations) on the snapshot of ``W``."""
        return self._build(W, bias, warm=False)

    def refresh(self, W: torch.Tensor, bias: torch.Tensor | None = None) -> dict:
        """Warm refresh: ``warm_iters`` k-means iterations from the current centroids,
        then rebuild the inverted lists from the new snapshot of ``W``.

        Falls back to a cold build when there is nothing to start from (first
        call, or a different L, d or bias layout)."""
        warm = (self._centroids is not None and self._snapshot is not None
                and W.shape[0] == self.num_labels and W.shape[1] == self.dim
                and (bias is not None) == self.has_bias)
        return self._build(W, bias, warm=warm)

    def _build(self, W: torch.Tensor, bias: torch.Tensor | None, warm: bool) -> dict:
        t0 = time.perf_counter()
        x = self._augment(W, bias)
        L = x.shape[0]
        K = self.clusters if self.clusters is not None else default_clusters(L)
        check_int("clusters", K, 1, L)
        check_int("nprobe", self.nprobe, 1, K)
        x = self._placed(x)
        with _device_context(x.device):
            if warm:
                centroids = self._kmeans(x, K, self.warm_iters, init=self._centroids)
            else:
                centroids = self._kmeans(x, K, self.niter, init=None)
            t1 = time.perf_counter()
            self._make_index(x, centroids, bias is not None)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
        t2 = time.perf_counter()
        self.builds += 1
        self.last_build_seconds = t2 - t0
        self.last_build_kind = "warm" if warm else "cold"
        self.last_build_info = {
            "kind": self.last_build_kind, "seconds": t2 - t0, "kmeans_seconds": t1 - t0,
            "add_seconds": t2 - t1, "clusters": K, "nprobe": self.effective_nprobe,
            "iterations": self.warm_iters if warm else self.niter, "num_labels": L,
            "gpu": bool(x.is_cuda),
        }
        return dict(self.last_build_info)

    def _augment(self, W: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """[W, bias] as float32 contiguous rows (a copy: the snapshot must not follow W)."""
        if W.dim() != 2:
            raise ValueError(f"W must be [L, d], got shape {tuple(W.shape)}")
        W = W.detach().to(torch.float32)
        if bias is not None:
            b = bias.detach().to(device=W.device, dtype=torch.float32).reshape(-1, 1)
            if b.shape[0] != W.shape[0]:
                raise ValueError(f"bias has {b.shape[0]} entries, W has {W.shape[0]} rows")
            return torch.cat([W, b], dim=1).contiguous()
        return W.clone(memory_format=torch.contiguous_format)

    def _placed(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device the index will live on (its GPU, or the host)."""
        target = self.index_device(x)
        return x if x.device == target else x.to(target)

    def index_device(self, x: torch.Tensor) -> torch.device:
        """Where an index over ``x`` lives: the configured CUDA device, else ``x``'s GPU, else
        the current GPU, when faiss builds on a GPU (:meth:`_gpu_wanted`); else the host."""
        if not self._gpu_wanted(x):
            return torch.device("cpu")
        if self.device is not None and self.device.type == "cuda":
            return _with_index(self.device)
        return x.device if x.is_cuda else torch.device("cuda", torch.cuda.current_device())

    def _gpu_wanted(self, x: torch.Tensor) -> bool:
        if self.use_gpu is False:
            return False
        if self.use_gpu:
            return True
        on_cuda = x.is_cuda or (self.device is not None and self.device.type == "cuda")
        return on_cuda and faiss_has_gpu()

    def _gpu_resources(self):
        if self._gpu_res is None:
            self._gpu_res = _faiss().StandardGpuResources()
        return self._gpu_res

    def _kmeans(self, x: torch.Tensor, K: int, niter: int, init: np.ndarray | None) -> np.ndarray:
        """Spherical k-means centroids, float32 [K, d]; ``init`` seeds them (warm start)."""
        if init is not None and niter == 0:
            return init
        faiss = _faiss()
        L, d = x.shape
        cp = faiss.ClusteringParameters()
        cp.niter = niter
        cp.seed = self.seed
        cp.spherical = True  # unit-norm centroids: partition label rows by direction
        cp.max_points_per_centroid = max(L, 1)  # no subsampling: cluster every label
        cp.min_points_per_centroid = 1  # small L is legitimate here, skip faiss's warning
        clus = faiss.Clustering(d, K, cp)
        if init is not None:
            # Filled centroids are used as the initialisation (not frozen).
            faiss.copy_array_to_vector(np.ascontiguousarray(init, dtype=np.float32).ravel(), clus.centroids)
        if x.is_cuda:
            cfg = faiss.GpuIndexFlatConfig()
            cfg.device = x.device.index  # the GPU that holds W, not necessarily GPU 0
            assign = faiss.GpuIndexFlatIP(self._gpu_resources(), d, cfg)
        else:
            assign = faiss.IndexFlatIP(d)
        # Clustering.train takes numpy only: a host copy on GPU, a view on CPU.
        clus.train(x.cpu().numpy(), assign)
        return faiss.vector_to_array(clus.centroids).reshape(K, d).astype(np.float32, copy=False)

    def _make_index(self, x: torch.Tensor, centroids: np.ndarray, has_bias: bool) -> None:
        """An IVF index whose quantizer holds ``centroids`` (hence trained), filled with ``x``."""
        faiss = _faiss()
        K, d = centroids.shape
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(np.ascontiguousarray(centroids))
        index = faiss.IndexIVFFlat(quantizer, d, K, faiss.METRIC_INNER_PRODUCT)
        assert index.is_trained  # a filled quantizer counts as trained
        if x.is_cuda:
            index = faiss.index_cpu_to_gpu(self._gpu_resources(), x.device.index, index)
        index.nprobe = min(self.nprobe, GPU_MAX_K) if x.is_cuda else self.nprobe
        index.add(x)
        self._quantizer = quantizer  # keep the CPU quantizer alive alongside the index
        self._index = index
        self._centroids = centroids
        self._snapshot = x
        self.has_bias = has_bias

    @property
    def effective_nprobe(self) -> int:
        """nprobe as searched (clamped to 2048 on a GPU index)."""
        return min(self.nprobe, GPU_MAX_K) if self.on_gpu else self.nprobe

    def set_nprobe(self, nprobe: int) -> None:
        """Change tau for later searches (validated against K once built)."""
        K = self._centroids.shape[0] if self._centroids is not None else None
        self.nprobe = check_int("nprobe", nprobe, 1, K)
        if self._index is not None:
            self._index.nprobe = self.effective_nprobe

    # -- searching ------------------------------------------------------
    def search(self, E: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate top-``k`` labels by inner product for the rows of ``E`` [B, d].

        Returns ``(scores, ids)``: float32 and int64 [B, k] on ``E``'s device,
        best first.  Slots the probed clusters could not fill (fewer than k
        labels in them) have id -1 and score -inf.  With a bias index the
        scores include the bias."""
        self._check_built()
        check_int("k", k, 1)
        if E.dim() != 2 or E.shape[1] != self.dim:
            raise ValueError(f"queries must be [B, {self.dim}], got shape {tuple(E.shape)}")
        q = E.detach().to(torch.float32)
        if self.has_bias:
            q = torch.cat([q, q.new_ones(q.shape[0], 1)], dim=1)
        q = q.to(self._snapshot.device).contiguous()
        kk = min(k, GPU_MAX_K) if self.on_gpu else k
        with _device_context(q.device):
            D, I = self._index.search(q, kk)
        if kk < k:
            D = torch.cat([D, D.new_full((D.shape[0], k - kk), float("-inf"))], dim=1)
            I = torch.cat([I, I.new_full((I.shape[0], k - kk), -1)], dim=1)
        D = D.masked_fill(I < 0, float("-inf"))  # faiss reports -FLT_MAX for empty slots
        return D.to(E.device), I.to(E.device)

    def _check_built(self) -> None:
        if self._index is None:
            raise RuntimeError("the MIPS index is not built: call build(W) or refresh(W) first")

    # -- checkpointing --------------------------------------------------
    def state_dict(self) -> dict:
        """Centroids, snapshot and settings: enough to rebuild the identical index
        without k-means.  The snapshot stays on its device (``torch.load``'s
        ``map_location`` decides where it comes back)."""
        state = {"clusters": self.clusters, "nprobe": self.nprobe, "niter": self.niter,
                 "warm_iters": self.warm_iters, "seed": self.seed, "builds": self.builds}
        if self._index is not None:
            state.update(centroids=torch.from_numpy(self._centroids.copy()),
                         snapshot=self._snapshot, has_bias=self.has_bias)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore settings and rebuild the index from the saved centroids and snapshot
        (deterministic assignment: same lists, same search results)."""
        self.clusters = state["clusters"]
        self.nprobe = int(state["nprobe"])
        self.niter = int(state["niter"])
        self.warm_iters = int(state["warm_iters"])
        self.seed = int(state["seed"])
        self.builds = int(state.get("builds", 0))
        if "centroids" not in state:
            self._index = self._centroids = self._snapshot = None
            return
        # Placed by the configured device: a checkpoint loads to the CPU (map_location), and
        # a resumed CUDA run must search on its GPU as the uninterrupted run did.
        x = self._placed(state["snapshot"].to(torch.float32).contiguous())
        centroids = state["centroids"].cpu().numpy().astype(np.float32)
        with _device_context(x.device):
            self._make_index(x, np.ascontiguousarray(centroids), bool(state["has_bias"]))


def _with_index(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:N`` (the current device), so comparisons and faiss get a number."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _device_context(device: torch.device):
    """``torch.cuda.device(device)`` for a CUDA device (faiss uses the current device's torch
    stream), nothing for the CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
