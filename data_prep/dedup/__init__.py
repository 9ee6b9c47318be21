"""Exact and near (MinHash LSH) deduplication of code files, on one process or across MPI ranks.

    from data_prep.dedup import exact_dedup, near_dedup, NearDedupConfig
    res = near_dedup(records, NearDedupConfig(threshold=0.7), comm=None)
    res.kept_ids, res.dropped["some/id"] == {"duplicate_of": ..., "neighbour": ..., "jaccard": ...}
"""
from .common import DedupResult, Doc, license_rank, preference_key
from .exact import ExactDedupConfig, content_hash, exact_dedup
from .minhash import estimate_jaccard, jaccard, shingle_batch, shingle_set, tokenize
from .near import NearDedupConfig, near_dedup, signatures

__all__ = [
    "DedupResult", "Doc", "ExactDedupConfig", "NearDedupConfig", "content_hash",
    "estimate_jaccard", "exact_dedup", "jaccard", "license_rank", "near_dedup",
    "preference_key", "shingle_batch", "shingle_set", "signatures", "tokenize",
]
