"""LSH banding, candidate pairs, and clusters over verified edges with one survivor each."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .minhash import U64, mix64


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[files x bands] uint64 bucket keys: band j hashes signature columns j*rows .. j*rows+rows-1
    with a band-specific salt, so equal keys in different bands are different buckets."""
    n = sig.shape[0]
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands*rows = {bands * rows} exceeds the {sig.shape[1]} permutations")
    mul = mix64(np.arange(1, rows + 1, dtype=U64) * U64(0x9E3779B97F4A7C15)) | U64(1)
    salt = mix64(np.arange(bands, dtype=U64) + U64(0xA0761D6478BD642F))
    keys = np.empty((n, bands), dtype=U64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            h = np.full(n, salt[j], dtype=U64)
            for r in range(rows):
                h += sig[:, j * rows + r].astype(U64) * mul[r]
            keys[:, j] = mix64(h)
    return keys


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l)."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    shift = np.repeat(starts.astype(np.int64) - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)


def unique_pairs(lo: np.ndarray, hi: np.ndarray, n_total: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct (lo, hi) pairs with lo < hi."""
    lo, hi = np.minimum(lo, hi).astype(np.int64), np.maximum(lo, hi).astype(np.int64)
    keep = lo != hi
    code = np.unique(lo[keep] * np.int64(max(n_total, 1)) + hi[keep])
    return code // max(n_total, 1), code % max(n_total, 1)


def candidate_pairs(keys: np.ndarray, refs: np.ndarray, order_keys: np.ndarray, n_total: int,
                    window: int = 64, chunk_pairs: int = 1 << 22
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs of documents that share a bucket key: (lo, hi, largest bucket size).

    keys, refs and order_keys are parallel (one entry per document and band); refs < n_total.
    Within a bucket, members are ordered by order_key (a hash of the id, so the order does not
    depend on sharding) and each is paired with the next `window` members: a bucket of up to
    window + 1 documents yields all its pairs, a larger one (a flood of near-identical files)
    about window pairs per member, still connecting them, instead of a quadratic number.
    Buckets are expanded about chunk_pairs pairs at a time and merged as distinct pairs, so
    the same pair found in many bands costs memory once."""
    e = np.empty(0, dtype=np.int64)
    if len(keys) == 0:
        return e, e, 0
    order = np.lexsort((refs, order_keys, keys))
    ks, rs = keys[order], refs[order].astype(np.int64)
    brk = np.flatnonzero(ks[1:] != ks[:-1]) + 1
    starts = np.concatenate([[0], brk])
    ends = np.concatenate([brk, [len(ks)]])
    sizes = ends - starts
    big = sizes >= 2
    if not big.any():
        return e, e, int(sizes.max())
    gs, ge = starts[big], ends[big]
    g = ge - gs
    w = np.minimum(g - 1, window)
    npairs = w * g - w * (w + 1) // 2           # sum over members of min(window, members after)
    cut = np.searchsorted(np.cumsum(npairs), np.arange(chunk_pairs, int(npairs.sum()),
                                                       chunk_pairs), side="right")
    n = np.int64(max(n_total, 1))
    found = np.empty(0, dtype=np.int64)
    for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [len(gs)]])):
        cs, ce = gs[a:b], ge[a:b]
        if len(cs) == 0:
            continue
        pos = _ranges(cs, ce - cs - 1)                 # every member but the bucket's last
        partners = np.minimum(np.repeat(ce, ce - cs - 1) - pos - 1, window)
        i = np.repeat(pos, partners)
        j = _ranges(pos + 1, partners)
        lo, hi = unique_pairs(rs[i], rs[j], n_total)
        found = np.union1d(found, lo * n + hi) if len(found) else lo * n + hi
    return found // n, found % n, int(sizes.max())


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self.parent[ra] = rb


def decide_clusters(lo: np.ndarray, hi: np.ndarray, jac: np.ndarray, meta: dict
                    ) -> tuple[dict[int, tuple[int, int, float]], int]:
    """Connected components of the edges (lo[k], hi[k]) with similarity jac[k]; in each, the
    document with the smallest preference key survives. meta: {ref: (preference key, id)} for
    every endpoint. Returns ({dropped ref: (survivor ref, neighbour ref, similarity)}, number of
    clusters). The neighbour is the survivor when the two are directly similar, otherwise the
    most similar neighbour (ties: smallest id) - so every drop is backed by a verified edge."""
    if len(lo) == 0:
        return {}, 0
    nodes = np.unique(np.concatenate([lo, hi]))
    li = np.searchsorted(nodes, lo).tolist()
    hj = np.searchsorted(nodes, hi).tolist()
    jl = [float(x) for x in jac]
    uf = UnionFind(len(nodes))
    adj: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for u, v, s in zip(li, hj, jl):
        uf.union(u, v)
        adj[u].append((v, s))
        adj[v].append((u, s))
    comps: dict[int, list[int]] = defaultdict(list)
    for u in range(len(nodes)):
        comps[uf.find(u)].append(u)
    refs = nodes.tolist()
    out: dict[int, tuple[int, int, float]] = {}
    for members in comps.values():
        survivor = min(members, key=lambda u: meta[refs[u]][0])
        for d in members:
            if d == survivor:
                continue
            direct = [s for o, s in adj[d] if o == survivor]
            if direct:
                nb, s = survivor, direct[0]
            else:
                nb, s = min(adj[d], key=lambda e: (-e[1], meta[refs[e[0]]][1]))
            out[refs[d]] = (refs[survivor], refs[nb], s)
    return out, len(comps)
