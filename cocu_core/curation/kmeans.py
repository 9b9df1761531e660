"""Per-image k-means over the archive's concept embeddings, batched over images.

The rule (shared with the reference, which runs scikit-learn's Lloyd from the same initial centres):
points are an image's archive concepts in ranked order; ``k = ceil(n / 2)`` clusters when n > 2,
otherwise every concept is its own cluster. ``restarts`` k-means++ initialisations are drawn from
counter-based uniforms ``uniforms(seed, row, restart, step)`` (a splitmix64 hash of the image's
global row), so an image's clusters do not depend on how images are batched. Each restart runs
exactly ``iters`` Lloyd updates and a final assignment (ties -> lowest cluster index; an empty
cluster keeps its previous centre); the restart with the lowest inertia wins (ties -> lowest
restart). Labels are renumbered by first appearance in ranked order, so equal partitions have
equal label lists.

The batched path (torch, float64) runs Lloyd in Gram space: with centres C = W P (W the row-normalised membership
matrix), ||p_a - c_k||^2 = G_aa - 2 (G W^T)_ak + (W G W^T)_kk with G = P P^T, so one iteration costs
O(A^2 K) per image and restart instead of O(A K d).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

TIE_RTOL = 1e-9  # relative tolerance under which potentials / inertias count as equal
STRIDE = 16  # uniforms reserved per k-means++ step (>= n_trials(k) for any k < e^14)
# Elements per working array (images x restarts x A x max(A, K)); bounds k-means memory.
_CHUNK_ELEMS = 1 << 22


def n_clusters_for(n: int) -> int:
    """Why: the paper's cluster count, ceil(|A|/2), with small archives kept as singletons."""
    return int(math.ceil(n / 2)) if n > 2 else int(n)


def uniforms(seed: int, rows: np.ndarray, restarts: int, steps: int) -> np.ndarray:
    """Why: reproducible U[0,1) per (image row, restart, step), independent of batching; [len(rows), R, S]."""
    with np.errstate(over="ignore"):
        r = np.asarray(rows, np.uint64).reshape(-1, 1, 1)
        x = (np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15) + r * np.uint64(0xBF58476D1CE4E5B9)
             + np.arange(restarts, dtype=np.uint64).reshape(1, -1, 1) * np.uint64(0x94D049BB133111EB)
             + np.arange(steps, dtype=np.uint64).reshape(1, 1, -1) * np.uint64(0xD6E8FEB86659FD93))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def n_trials(k: int | np.ndarray):
    """Why: scikit-learn's greedy k-means++ candidate count, 2 + floor(ln k)."""
    return 2 + np.floor(np.log(np.maximum(k, 1))).astype(np.int64)


def first_near_min(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Why: argmin where values within TIE_RTOL of the minimum tie (-> lowest index); symmetric point
    pairs give exactly equal potentials that float rounding would otherwise order arbitrarily."""
    m = np.min(x, axis=axis, keepdims=True)
    return np.argmax(x <= m + TIE_RTOL * np.abs(m) + 1e-15, axis=axis)


def kmeanspp_init(points: np.ndarray, k: int, u: np.ndarray) -> np.ndarray:
    """Why: the literal greedy k-means++ seeding both paths share; u [1 + (k-1)*STRIDE] -> positions [k].

    Step j draws ``n_trials(k)`` candidates by D^2 sampling (candidate t uses u[1 + (j-1)*STRIDE + t]:
    the first position whose cumulative D^2 exceeds u * total) and keeps the one that lowers the
    potential most (ties -> lowest t).
    """
    n = len(points)
    trials = int(n_trials(k))
    chosen = [min(int(u[0] * n), n - 1)]
    d2 = ((points - points[chosen[0]]) ** 2).sum(axis=1)
    for j in range(1, k):
        cum = np.cumsum(d2)
        cands, pots, d2s = [], [], []
        for t in range(trials):
            cand = min(int((cum <= u[1 + (j - 1) * STRIDE + t] * cum[-1]).sum()), n - 1)
            cd2 = np.minimum(d2, ((points - points[cand]) ** 2).sum(axis=1))
            cands.append(cand)
            pots.append(float(cd2.sum()))
            d2s.append(cd2)
        t_best = first_near_min(np.asarray(pots))
        chosen.append(cands[t_best])
        d2 = d2s[t_best]
    return np.asarray(chosen, np.int64)


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Why: renumber clusters by first appearance so equal partitions compare equal."""
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return labels
    uniq, first = np.unique(labels, return_index=True)
    remap = np.empty(int(labels.max()) + 1, np.int64)
    remap[uniq[np.argsort(first, kind="stable")]] = np.arange(len(uniq))
    return remap[labels]


def inertia(points: np.ndarray, labels: np.ndarray) -> float:
    """Why: the k-means objective, to compare partitions with scikit-learn's."""
    total = 0.0
    for lab in np.unique(labels):
        p = points[labels == lab]
        total += float(((p - p.mean(axis=0)) ** 2).sum())
    return total


def _first_near_min_t(x, dim: int):
    """Why: torch twin of first_near_min (same tolerance, same lowest-index tie rule)."""
    m = x.min(dim=dim, keepdim=True).values
    return torch.argmax((x <= m + TIE_RTOL * m.abs() + 1e-15).to(torch.int32), dim=dim)


def _kmeans_chunk(P: np.ndarray, vb: np.ndarray, kb: np.ndarray, rows: np.ndarray, iters: int, restarts: int,
                  seed: int) -> np.ndarray:
    """Why: all restarts of a chunk of images at once, in Gram space (torch, float64, multi-threaded);
    returns canonical labels [b, A]."""
    nb, A = vb.shape
    R = restarts
    K = int(kb.max())
    f64 = torch.float64
    Pt = torch.from_numpy(np.ascontiguousarray(P, np.float64))
    valid = torch.from_numpy(vb)
    n = valid.sum(dim=1)  # [b]
    kt = torch.from_numpy(np.asarray(kb, np.int64))
    G = torch.bmm(Pt, Pt.transpose(1, 2))  # [b, A, A]
    diag = torch.diagonal(G, dim1=1, dim2=2)  # [b, A]
    u = torch.from_numpy(uniforms(seed, rows, R, 1 + (K - 1) * STRIDE))  # [b, R, S]
    L = torch.from_numpy(n_trials(kb))  # [b]
    Lmax = int(L.max())
    bi = torch.arange(nb)[:, None]
    nmax = (n - 1)[:, None]

    def d2_to(idx):  # idx [b, m] -> squared distances [b, m, A]
        d = diag[:, None, :] + diag.gather(1, idx)[:, :, None] - 2 * G[bi, idx]
        return torch.where(valid[:, None, :], d.clamp_min(0.0), torch.zeros((), dtype=f64))

    # Greedy k-means++ seeding for every (image, restart).
    cent = torch.zeros((nb, R, K), dtype=torch.int64)
    cent[:, :, 0] = torch.minimum((u[:, :, 0] * n[:, None]).to(torch.int64), nmax)
    d2 = d2_to(cent[:, :, 0])  # [b, R, A]
    tt = torch.arange(Lmax)
    for j in range(1, K):
        cum = torch.cumsum(d2, dim=2)  # [b, R, A]
        target = u[:, :, 1 + (j - 1) * STRIDE + tt] * cum[:, :, -1:]  # [b, R, Lmax]
        cand = (cum[:, :, None, :] <= target[..., None]).sum(dim=3)
        cand = torch.minimum(cand, nmax[:, :, None])  # [b, R, Lmax]
        cd2 = torch.minimum(d2[:, :, None, :], d2_to(cand.reshape(nb, -1)).reshape(nb, R, Lmax, A))
        pot = torch.where(tt[None, None, :] < L[:, None, None], cd2.sum(dim=3), torch.tensor(float("inf"), dtype=f64))
        t_best = _first_near_min_t(pot, dim=2)  # [b, R]
        pick = cand.gather(2, t_best[..., None])[..., 0]
        active = (j < kt)[:, None]
        cent[:, :, j] = torch.where(active, pick, torch.zeros((), dtype=torch.int64))
        new_d2 = cd2.gather(2, t_best[:, :, None, None].expand(nb, R, 1, A))[:, :, 0, :]
        d2 = torch.where(active[:, :, None], new_d2, d2)
    kvalid = torch.arange(K)[None, :] < kt[:, None]  # [b, K]
    W = torch.nn.functional.one_hot(cent, A).to(f64) * kvalid[:, None, :, None]  # [b, R, K, A]
    inf = torch.tensor(float("inf"), dtype=f64)
    vmask = valid[:, None, None, :]

    kv = kvalid[:, None, None, :]  # [b, 1, 1, K]

    def distances(W):  # [b, A, R, K]: K last so the arg-min runs over contiguous memory
        GW = torch.bmm(G, W.reshape(nb, R * K, A).transpose(1, 2)).reshape(nb, A, R, K)
        cc = torch.einsum("bark,brka->brk", GW, W)  # w_k^T G w_k
        d = diag[:, :, None, None] - 2 * GW + cc[:, None, :, :]
        return torch.where(kv, d, inf)

    def assign(W):  # -> labels [b, R, A], distances [b, A, R, K]
        d = distances(W)
        return torch.argmin(d, dim=3).permute(0, 2, 1), d

    lab_old = None
    for _ in range(iters):
        lab, _d = assign(W)
        if lab_old is not None and torch.equal(lab, lab_old):
            break  # a fixed point of every (image, restart): further updates change nothing
        lab_old = lab
        onehot = (torch.nn.functional.one_hot(lab, K).permute(0, 1, 3, 2) > 0) & vmask  # [b, R, K, A]
        cnt = onehot.sum(dim=3, keepdim=True)
        W = torch.where(cnt > 0, onehot.to(f64) / cnt.clamp_min(1), W)
    lab, dist = assign(W)
    best_d = dist.gather(3, lab.permute(0, 2, 1)[..., None])[..., 0].permute(0, 2, 1)  # [b, R, A]
    inert = torch.where(valid[:, None, :], best_d, torch.zeros((), dtype=f64)).sum(dim=2)  # [b, R]
    best = _first_near_min_t(inert, dim=1)
    lab = lab[torch.arange(nb), best].numpy()  # [b, A]
    # Canonical renumbering by first appearance (points are in ranked order).
    bnp = np.arange(nb)[:, None]
    lab = np.where(vb, lab, K)
    first = np.full((nb, K + 1), A, np.int64)
    np.minimum.at(first, (np.broadcast_to(bnp, lab.shape), lab), np.broadcast_to(np.arange(A), lab.shape))
    rank = np.argsort(np.argsort(first[:, :K], axis=1, kind="stable"), axis=1, kind="stable")
    return np.where(vb, np.take_along_axis(rank, np.minimum(lab, K - 1), axis=1), -1)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Why: many small torch ops collapse under OpenMP spin-waits when other processes share the CPU;
    run them with ``n`` threads and restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batched_kmeans(emb: np.ndarray, valid: np.ndarray, rows: np.ndarray, iters: int, restarts: int = 10,
                   seed: int = 0, threads: int = 1) -> np.ndarray:
    """Why: cluster every image's archive at once; emb [B, A, d], valid [B, A] (valid slots first) -> labels [B, A]."""
    with torch_threads(threads):
        return _batched_kmeans(emb, valid, rows, iters, restarts, seed)


def _batched_kmeans(emb: np.ndarray, valid: np.ndarray, rows: np.ndarray, iters: int, restarts: int,
                    seed: int) -> np.ndarray:
    B, A = valid.shape
    labels = np.where(valid, np.arange(A)[None, :], -1).astype(np.int64)  # n <= 2: singletons
    n = valid.sum(axis=1)
    big = np.flatnonzero(n > 2)
    if len(big) == 0:
        return labels
    k = (n + 1) // 2
    # Sort by archive size so chunks are trimmed to their own widest archive.
    big = big[np.argsort(n[big], kind="stable")]
    lo = 0
    while lo < len(big):
        # Sizes ascend: a chunk holds archives at most 25% wider than its first (little padding waste)
        # and at most _CHUNK_ELEMS working elements.
        size_end = int(np.searchsorted(n[big], int(n[big[lo]] * 1.25), side="right"))
        step = max(1, min(size_end - lo, _CHUNK_ELEMS // (restarts * int(n[big[lo]]) ** 2)))
        widest = int(n[big[lo + step - 1]])
        step = max(1, min(step, _CHUNK_ELEMS // (restarts * widest ** 2)))
        chunk = big[lo:lo + step]
        Aw = int(n[chunk].max())
        P = np.asarray(emb[chunk, :Aw], np.float64)
        labels[chunk, :Aw] = _kmeans_chunk(P, valid[chunk, :Aw], k[chunk], np.asarray(rows)[chunk], iters,
                                           restarts, seed)
        lo += step
    return labels
