"""PrivTune's token graph: anchors, the k-NN graph, n-hop rings and target candidates (cached on disk).

* Anchors a_v [ours]: the bottom output of token v alone (``privtune_ray/models/anchors.py``); for m = 0
  v's embedding row through the embedding stage, in the same space as what the device uploads.
* Graph: each token linked to its k nearest anchors by cosine similarity, made undirected.
* Rings: N_n(v), the tokens at shortest-path distance exactly n from v (breadth-first, as sparse
  frontier products). A token whose ring is empty (its component is too small) falls back to its farthest
  non-empty ring; if every ring at n is empty, n exceeds the graph's diameter and that is an error.
* Candidates [ours, for speed]: the ``candidates`` ring members nearest to a_v (cosine); PrivTune picks
  the target among them as the one nearest to the actual contextual h_i.

Built once per (model, m, k, n, candidates) and cached as .npz under ``$PRIVTUNE_CACHE_DIR``
(default ``~/.cache/privtune-ray``).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import ConfigError
from ..models.anchors import cache_dir, load_or_build_anchors, token_anchors
from ..models.split import BottomModel

GRAPH_VERSION = 1


@dataclass
class TokenGraph:
    anchors: torch.Tensor  # [V, d] float32, bottom output of each token alone
    candidates: torch.Tensor  # [V, C] int64 ring members nearest to a_v (-1 = none)
    ring_hop: np.ndarray  # [V] the hop distance the candidates come from (n, or less on fallback)
    norm_range: tuple[float, float]  # (1st, 99th) percentile of anchor norms: "valid" representations
    k: int
    n_hops: int
    build_s: float = 0.0

    @property
    def vocab_size(self) -> int:
        return int(self.anchors.shape[0])


def knn_graph(anchors: torch.Tensor, k: int, chunk: int = 2048) -> sp.csr_matrix:
    """Undirected k-NN graph by cosine similarity (self excluded), as a symmetric 0/1 CSR matrix."""
    vocab_size = anchors.shape[0]
    if not 1 <= k < vocab_size:
        raise ConfigError(f"PrivTune k={k} must be in 1..{vocab_size - 1} (the vocabulary has {vocab_size} tokens)")
    unit = torch.nn.functional.normalize(anchors, dim=-1)
    neighbours = []
    for start in range(0, vocab_size, chunk):
        sims = unit[start : start + chunk] @ unit.T
        sims[torch.arange(sims.shape[0]), torch.arange(start, start + sims.shape[0])] = -2.0
        neighbours.append(sims.topk(k, dim=-1).indices)
    cols = torch.cat(neighbours).numpy().ravel()
    rows = np.repeat(np.arange(vocab_size), k)
    adj = sp.csr_matrix((np.ones_like(rows, dtype=np.float32), (rows, cols)), shape=(vocab_size, vocab_size))
    adj = ((adj + adj.T) > 0).astype(np.float32)
    return adj.tocsr()


def rings(adj: sp.csr_matrix, sources: np.ndarray, n: int) -> list[sp.csr_matrix]:
    """Boolean CSR [len(sources), V] of the tokens at exactly hop h from each source, for h = 1..n."""
    frontier = sp.csr_matrix(
        (np.ones(len(sources), dtype=np.float32), (np.arange(len(sources)), sources)),
        shape=(len(sources), adj.shape[0]),
    )
    reached = frontier.copy()
    out = []
    for _ in range(n):
        nxt = (frontier @ adj) > 0
        nxt = (nxt.astype(np.float32) - nxt.multiply(reached)).tocsr()
        nxt.eliminate_zeros()
        reached = ((reached + nxt) > 0).astype(np.float32)
        frontier = nxt.astype(np.float32)
        out.append(frontier)
    return out


def build_token_graph(
    bottom: BottomModel, tokenizer, k: int = 10, n_hops: int = 3, n_candidates: int = 8
) -> TokenGraph:
    """Anchors of the whole vocabulary through ``bottom``, then :func:`graph_from_anchors`."""
    start_time = time.perf_counter()
    graph = graph_from_anchors(token_anchors(bottom, tokenizer), k, n_hops, n_candidates)
    graph.build_s = time.perf_counter() - start_time
    return graph


def graph_from_anchors(
    anchors: torch.Tensor, k: int = 10, n_hops: int = 3, n_candidates: int = 8, chunk: int = 2048
) -> TokenGraph:
    """k-NN graph, n-hop rings and target candidates over ``anchors`` [V, d]."""
    if n_hops < 1:
        raise ConfigError(f"PrivTune n_hops must be >= 1, got {n_hops}")
    if n_candidates < 1:
        raise ConfigError(f"PrivTune candidates must be >= 1, got {n_candidates}")
    vocab_size = anchors.shape[0]
    adj = knn_graph(anchors, k)
    unit = torch.nn.functional.normalize(anchors, dim=-1)
    candidates = torch.full((vocab_size, n_candidates), -1, dtype=torch.long)
    ring_hop = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, vocab_size, chunk):
        sources = np.arange(start, min(start + chunk, vocab_size))
        per_hop = rings(adj, sources, n_hops)
        # Each source uses its farthest non-empty ring (n, or less when its component is small).
        nonempty = np.stack([np.diff(r.indptr) > 0 for r in per_hop])  # [n, S]
        hop = np.where(nonempty.any(0), n_hops - np.argmax(nonempty[::-1], axis=0), 0)
        chosen = sum(sp.diags((hop == h).astype(np.float32)) @ per_hop[h - 1] for h in range(1, n_hops + 1))
        member = torch.from_numpy(chosen.toarray() > 0)
        sims = unit[sources] @ unit.T
        sims[~member] = -3.0
        top = sims.topk(min(n_candidates, vocab_size), dim=-1)
        candidates[sources] = torch.where(top.values > -3.0, top.indices, torch.full_like(top.indices, -1))
        ring_hop[sources] = hop
    if (ring_hop < n_hops).all():
        raise ConfigError(
            f"PrivTune n_hops={n_hops} exceeds the diameter of the k-NN token graph (k={k}): no token has a "
            f"neighbour at distance {n_hops}; lower mechanism.n_hops or raise mechanism.k"
        )
    norms = anchors.norm(dim=-1)
    lo, hi = torch.quantile(norms, torch.tensor([0.01, 0.99])).tolist()
    return TokenGraph(anchors, candidates, ring_hop, (lo, hi), k, n_hops)


def graph_cache_key(model_id: str, m: int, k: int, n_hops: int, n_candidates: int) -> str:
    text = f"v{GRAPH_VERSION}|{model_id}|m={m}|k={k}|n={n_hops}|c={n_candidates}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_or_build_token_graph(
    bottom: BottomModel,
    tokenizer,
    model_id: str,
    k: int = 10,
    n_hops: int = 3,
    n_candidates: int = 8,
    directory: str | os.PathLike | None = None,
) -> TokenGraph:
    """The cached graph for (model, m, k, n, candidates), built and saved on first use."""
    path = cache_dir(directory) / f"token-graph-{graph_cache_key(model_id, bottom.m, k, n_hops, n_candidates)}.npz"
    if path.is_file():
        z = np.load(path)
        return TokenGraph(
            torch.from_numpy(z["anchors"]),
            torch.from_numpy(z["candidates"]),
            z["ring_hop"],
            tuple(z["norm_range"].tolist()),
            int(z["k"]),
            int(z["n_hops"]),
            float(z["build_s"]),
        )
    start_time = time.perf_counter()
    graph = graph_from_anchors(load_or_build_anchors(bottom, tokenizer, model_id, directory), k, n_hops, n_candidates)
    graph.build_s = time.perf_counter() - start_time
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # one per process: parallel sweep points build at once
    np.savez(
        tmp,
        anchors=graph.anchors.numpy(),
        candidates=graph.candidates.numpy(),
        ring_hop=graph.ring_hop,
        norm_range=np.array(graph.norm_range),
        k=k,
        n_hops=n_hops,
        build_s=graph.build_s,
    )
    os.replace(tmp, path)
    return graph
