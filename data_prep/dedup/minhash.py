"""Vectorised shingling and MinHash signatures.

Tokens are maximal runs of ASCII word characters [A-Za-z0-9_] and non-ASCII characters: the same
as re.findall(r"\\w+", text) on ASCII text, with every non-ASCII character counted as a word
character (see `tokenize`, the plain-Python reference). This definition works on UTF-8 bytes, so a
whole batch of files is tokenised and hashed with numpy, with no Python loop over tokens:

* token hash: a polynomial hash of the token's bytes mod 2**64 (prefix sums of byte * B**-k, so
  each token costs O(1) after one cumulative sum over the batch), mixed with its length through
  the splitmix64 finaliser;
* shingle hash (n consecutive tokens): sum of token_hash[k + j] * M_j mod 2**64, finalised; a file
  with fewer than n tokens (but at least one) has one shingle made of all its tokens;
* MinHash: permutation i maps the shingle's top 32 bits x to (a_i * x + b_i) mod 2**32 with a_i odd
  (a bijection of 32-bit values); the signature is the minimum per file. The [shingles x perms]
  matrix is computed one permutation column at a time over the whole batch (a contiguous uint32
  vector, reduced per file with np.minimum.reduceat), which bounds memory to one column and keeps
  numpy's inner loops vectorised.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

U64 = np.uint64
U32 = np.uint32

# Fixed constants: hashes must not change between runs, processes or machines.
_BASE = U64(0x100000001B3 * 2 + 1)          # odd, so invertible mod 2**64
_BASE_INV = U64(pow(int(_BASE), -1, 1 << 64))
_LEN_MUL = U64(0x9E3779B97F4A7C15)
_SHORT_SALT = U64(0xD6E8FEB86659FD93)
_SHINGLE_MUL = np.array([0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5,
                         0x85EBCA77C2B2AE63, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53,
                         0x9FB21C651E98DF25, 0xB492B66FBE98F273], dtype=U64)

TOKEN_PATTERN = re.compile(r"[0-9A-Za-z_\x80-\U0010FFFF]+")


def tokenize(text: str) -> list[str]:
    """The tokens the vectorised code hashes, in plain Python (for reference and tests)."""
    return TOKEN_PATTERN.findall(text)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on a uint64 array (returns a new array)."""
    x = x ^ (x >> U64(30))
    x *= U64(0xBF58476D1CE4E5B9)
    x ^= x >> U64(27)
    x *= U64(0x94D049BB133111EB)
    x ^= x >> U64(31)
    return x


def _shingle_multiplier(j: int) -> np.uint64:
    if j < len(_SHINGLE_MUL):
        return _SHINGLE_MUL[j]
    return U64((int(mix64(np.array([j], dtype=U64))[0]) | 1) & ((1 << 64) - 1))


class _Powers:
    """BASE**k and BASE**-k mod 2**64 for k < len, grown on demand and shared by the process."""

    def __init__(self):
        self.pos = np.ones(1, dtype=U64)
        self.neg = np.ones(1, dtype=U64)

    @staticmethod
    def _table(base: np.uint64, n: int) -> np.ndarray:
        out = np.empty(n, dtype=U64)
        out[0] = 1
        k = 1
        with np.errstate(over="ignore"):
            while k < n:
                m = min(k, n - k)
                np.multiply(out[:m], U64(pow(int(base), k, 1 << 64)), out=out[k:k + m])
                k += m
        return out

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pos) < n:
            size = 1 << max(16, (n - 1).bit_length())
            self.pos = self._table(_BASE, size)
            self.neg = self._table(_BASE_INV, size)
        return self.pos, self.neg


_POWERS = _Powers()
_WINDOW = 1 << 16   # bytes per cumulative sum: small enough for the arrays to stay in cache


def _word_mask(u8: np.ndarray) -> np.ndarray:
    w = ((u8 | np.uint8(0x20)) - np.uint8(97)) < 26   # letters
    w |= (u8 - np.uint8(48)) < 10                                  # digits
    w |= u8 == 95                                                  # underscore
    w |= u8 >= 128                                                 # any non-ASCII (UTF-8) byte
    return w


def token_hashes(buf: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint64, start offsets int64) of the tokens of a UTF-8 buffer."""
    # Pad with a separator on both sides so that every token has a start and an end.
    u8 = np.frombuffer(b"\n" + buf + b"\n", dtype=np.uint8)
    word = _word_mask(u8)
    edges = np.flatnonzero(word[1:] != word[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    n = len(starts)
    out = np.empty(n, dtype=U64)
    i = 0
    with np.errstate(over="ignore"):
        while i < n:
            # The tokens that fit in one window (at least one, however long).
            j = max(i + 1, int(np.searchsorted(ends, starts[i] + _WINDOW, side="right")))
            lo, hi = int(starts[i]) - 1, int(ends[j - 1])      # u8[lo] is a separator
            pos, neg = _POWERS.get(hi - lo)
            acc = np.multiply(u8[lo:hi], neg[: hi - lo])        # uint8 * uint64 -> uint64
            np.cumsum(acc, out=acc)                             # acc[k] = sum_{t<=k} byte_t B**-t
            s, e = starts[i:j] - lo, ends[i:j] - lo
            # sum_{t=s}^{e-1} byte_t * B**-(t-s) = (acc[e-1] - acc[s-1]) * B**s
            out[i:j] = (acc[e - 1] - acc[s - 1]) * pos[s]
            i = j
        lens = (ends - starts).astype(U64)
        out = mix64(out ^ (lens * _LEN_MUL))
    return out, starts - 1


def shingle_batch(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of several files: (flat uint64 array, files in order and each file's
    shingles in text order, repeats kept; per-file counts int64). A file with t tokens has
    max(t - ngram + 1, 1) shingles, or 0 when it has no token."""
    enc = [t.encode("utf-8", "surrogatepass") for t in texts]
    lens = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
    th, tstart = token_hashes(b"\n".join(enc))
    doc_end = np.cumsum(lens + 1) - 1                   # separator position after each file
    ntok = np.diff(np.searchsorted(tstart, doc_end), prepend=0)
    counts = np.where(ntok >= ngram, ntok - ngram + 1, np.minimum(ntok, 1)).astype(np.int64)
    total = int(counts.sum())
    out = np.empty(total, dtype=U64)
    if total == 0:
        return out, counts
    nt = len(th)
    with np.errstate(over="ignore"):
        if nt >= ngram:
            m = nt - ngram + 1
            sh = th[:m] * _shingle_multiplier(0)
            for j in range(1, ngram):
                sh += th[j:j + m] * _shingle_multiplier(j)
            # Keep the shingles whose n tokens are in one file.
            doc_of_tok = np.repeat(np.arange(len(texts)), ntok)
            full = mix64(sh[doc_of_tok[:m] == doc_of_tok[ngram - 1:]])
        else:
            full = np.empty(0, dtype=U64)
        is_full = ntok >= ngram
        out[np.repeat(is_full, counts)] = full
        short = np.flatnonzero((ntok > 0) & ~is_full)
        if len(short):
            tok_first = np.cumsum(ntok) - ntok
            first_out = np.cumsum(counts) - counts
            vals = np.empty(len(short), dtype=U64)
            for k, d in enumerate(short):
                t0, t = int(tok_first[d]), int(ntok[d])
                acc = _SHORT_SALT * U64(t)
                for j in range(t):
                    acc += th[t0 + j] * _shingle_multiplier(j)
                vals[k] = acc
            out[first_out[short]] = mix64(vals)
    return out, counts


def shingle_set(text: str, ngram: int = 5) -> np.ndarray:
    """Sorted distinct shingle hashes of one file (what verification compares)."""
    flat, _ = shingle_batch([text], ngram)
    return np.unique(flat)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted distinct arrays; 0.0 when both are empty."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    if len(a) > len(b):
        a, b = b, a
    idx = np.searchsorted(b, a)
    idx[idx == len(b)] = 0
    inter = int(np.count_nonzero(b[idx] == a))
    return inter / (len(a) + len(b) - inter)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the num_perm hash permutations x -> a*x + b mod 2**32, a odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(U32) | U32(1)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(U32)
    return a, b


EMPTY = np.iinfo(np.uint32).max


def minhash(flat: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signatures [files x num_perm] uint32 from shingle_batch's output. A file without shingles
    gets all EMPTY (and must be kept out of matching by its caller)."""
    nd, p = len(counts), len(a)
    sig = np.full((nd, p), EMPTY, dtype=U32)
    has = counts > 0
    if not has.any():
        return sig
    x = (flat >> U64(32)).astype(U32)
    offs = (np.cumsum(counts) - counts)[has]
    cols = np.empty((p, len(offs)), dtype=U32)
    tmp = np.empty_like(x)
    for i in range(p):
        np.multiply(x, a[i], out=tmp)
        np.add(tmp, b[i], out=tmp)
        np.minimum.reduceat(tmp, offs, out=cols[i])
    sig[has] = cols.T
    return sig


def estimate_jaccard(sa: np.ndarray, sb: np.ndarray) -> float:
    """MinHash estimate: the fraction of permutations whose minima agree."""
    return float(np.count_nonzero(sa == sb)) / len(sa)
