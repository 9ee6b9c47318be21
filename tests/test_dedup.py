"""Exact and near deduplication (data_prep.dedup) on one process, on generated code corpora.

Similarities are checked against an independent plain-Python implementation: tokens from
re.findall(r"\\w+") (the corpora are ASCII, where it equals the package's tokenizer), shingles as
sets of token tuples."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest

from data_prep.dedup import (DedupResult, NearDedupConfig, estimate_jaccard, exact_dedup,
                             jaccard, license_rank, near_dedup, shingle_set, signatures, tokenize)
from data_prep.dedup.exact import ExactDedupConfig
from data_prep.dedup.lsh import band_keys
from data_prep.dedup.minhash import token_hashes
from data_prep.dedup.synthetic import code_corpus
from data_prep.records import Record

# --------------------------------------------------------------------------- reference


def ref_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    toks = re.findall(r"\w+", text)
    if not toks:
        return set()
    if len(toks) < n:
        return {tuple(toks)}
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def ref_jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = ref_shingles(a, n), ref_shingles(b, n)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


def without_timings(r: DedupResult) -> dict:
    d = r.as_dict()
    d.pop("timings")
    return d


@pytest.fixture(scope="module")
def corpus():
    return code_corpus(n_unique=300, n_near=40, n_exact=10, n_empty=4, n_families=5,
                       family_size=4, seed=11)


@pytest.fixture(scope="module")
def texts(corpus):
    return {d[0]: d[1] for d in corpus.docs}


@pytest.fixture(scope="module")
def near_result(corpus):
    return near_dedup(corpus.docs)


# --------------------------------------------------------------------------- config


def test_config_defaults_and_from_dict():
    cfg = NearDedupConfig()
    assert (cfg.ngram, cfg.num_perm, cfg.bands, cfg.rows, cfg.threshold, cfg.verify) == \
        (5, 256, 25, 10, 0.7, True)
    assert cfg.preference == ("license", "stars", "id")
    cfg = NearDedupConfig.from_dict({"bands": 64, "rows": 2, "num_perm": 128, "verify": False,
                                     "preference": ["stars", "path"]})
    assert (cfg.bands, cfg.rows, cfg.num_perm, cfg.verify) == (64, 2, 128, False)
    with pytest.raises(ValueError, match="'bandz'"):
        NearDedupConfig.from_dict({"bandz": 3})
    with pytest.raises(ValueError, match="exceeds num_perm"):
        NearDedupConfig(bands=30, rows=10)
    with pytest.raises(ValueError, match="threshold"):
        NearDedupConfig(threshold=1.5)
    with pytest.raises(ValueError, match="verify"):
        NearDedupConfig(verify="yes")
    with pytest.raises(ValueError, match="'licence'"):
        NearDedupConfig(preference=["licence"])
    with pytest.raises(ValueError, match="'x'"):
        ExactDedupConfig.from_dict({"x": 1})
    with pytest.raises(ValueError, match="bucket_window"):
        NearDedupConfig(bucket_window=0)


def test_license_rank():
    assert license_rank(["MIT"]) == license_rank(["apache-2.0"]) == 0
    assert license_rank(["BSD-2-Clause"]) == license_rank(["bsd-3-clause"]) == 0
    assert license_rank(["LGPL-2.1-only"]) == 1
    assert license_rank(["GPL-3.0-or-later"]) == license_rank(["AGPL-3.0"]) == 2
    assert license_rank(["SomethingElse"]) == 3
    assert license_rank([]) == license_rank(["unknown"]) == license_rank([""]) == 4
    assert license_rank(["GPL-3.0", "MIT"]) == 0        # dual-licensed: the best one


# --------------------------------------------------------------------------- hashing


def test_tokens_match_reference():
    rng = random.Random(3)
    alphabet = "ab_Z09 \t\n.,;(){}[]+-*/=<>'\"#"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        assert tokenize(text) == re.findall(r"\w+", text)
        hashes, _ = token_hashes(text.encode())
        assert len(hashes) == len(tokenize(text))
        seen: dict[str, int] = {}
        for tok, h in zip(tokenize(text), hashes.tolist()):   # a token always hashes alike
            assert seen.setdefault(tok, h) == h
    # Non-ASCII characters are word characters, so non-Latin text still tokenises.
    assert tokenize("naïve = café(x)  # 中文注释") == ["naïve", "café", "x", "中文注释"]
    assert len(token_hashes("naïve = café(x)  # 中文注释".encode())[0]) == 4


def test_shingle_sets_match_reference(corpus, texts):
    ids = sorted(texts)[:40]
    for i in ids:
        assert len(shingle_set(texts[i])) == len(ref_shingles(texts[i]))
    for a, b in corpus.near_pairs[:10]:
        assert jaccard(shingle_set(texts[a]), shingle_set(texts[b])) == \
            pytest.approx(ref_jaccard(texts[a], texts[b]), abs=1e-12)
    # Fewer tokens than the n-gram: the whole token list is one shingle.
    assert len(shingle_set("x = y")) == 1
    assert jaccard(shingle_set("x = y"), shingle_set("x  =  y\n")) == 1.0
    assert jaccard(shingle_set("x = y"), shingle_set("y = x")) == 0.0


def test_minhash_estimates_jaccard(corpus, texts):
    """An independent check of the vectorised signatures: their agreement estimates the true
    Jaccard similarity within 0.1 (256 permutations: standard error <= 0.031)."""
    pairs = corpus.near_pairs[:5] + [(corpus.near_pairs[i][0], corpus.near_pairs[i + 1][0])
                                     for i in range(5, 8)]
    medium = code_corpus(n_unique=20, n_near=0, n_exact=0, n_empty=0, n_medium=4, seed=5)
    mt = {d[0]: d[1] for d in medium.docs}
    checked = []
    for source, plist in ((texts, pairs), (mt, medium.medium_pairs)):
        sig, has = signatures([(i, source[i]) for p in plist for i in p])
        assert has.all()
        for k, (a, b) in enumerate(plist):
            true = ref_jaccard(source[a], source[b])
            est = estimate_jaccard(sig[2 * k], sig[2 * k + 1])
            assert abs(est - true) <= 0.1, (a, b, true, est)
            checked.append(true)
    assert min(checked) < 0.1 and max(checked) > 0.8       # covers unrelated to near-identical
    assert any(0.45 < j < 0.65 for j in checked)


# --------------------------------------------------------------------------- near dedup


def test_planted_pairs_are_near_duplicates(corpus, texts):
    sims = [ref_jaccard(texts[a], texts[b]) for a, b in corpus.near_pairs]
    sims += [ref_jaccard(texts[g[0]], texts[c]) for g in corpus.families for c in g[1:]]
    assert 0.8 <= min(sims) and max(sims) < 0.97


def test_near_dedup_recall_and_precision(corpus, near_result):
    res = near_result
    dropped = res.dropped
    for a, b in corpus.near_pairs + corpus.exact_pairs:
        assert (a in dropped) != (b in dropped), (a, b)
        loser, winner = (a, b) if a in dropped else (b, a)
        assert dropped[loser]["duplicate_of"] == winner
        assert dropped[loser]["neighbour"] == winner
    for family in corpus.families:
        kept = [i for i in family if i not in dropped]
        assert len(kept) == 1
        assert all(dropped[i]["duplicate_of"] == kept[0] for i in family if i != kept[0])
    planted = corpus.planted()
    assert not [i for i in dropped if i not in planted], "dropped a file with no planted twin"
    n_expected = len(corpus.near_pairs) + len(corpus.exact_pairs) + \
        sum(len(g) - 1 for g in corpus.families)
    assert res.n_dropped == n_expected == res.stats["dropped"]
    assert res.n_docs == len(corpus.docs) == res.stats["docs"]
    assert sorted(res.kept_ids + list(dropped)) == sorted(d[0] for d in corpus.docs)


def test_every_drop_has_a_verified_neighbour(corpus, texts, near_result):
    for ident, info in near_result.dropped.items():
        true = ref_jaccard(texts[ident], texts[info["neighbour"]])
        assert true >= 0.7
        assert info["jaccard"] == pytest.approx(true, abs=1e-12)
        assert info["duplicate_of"] in near_result.kept_ids


def test_verification_rejects_lsh_collisions_below_threshold():
    """Pairs at Jaccard ~0.55 that do share an LSH bucket with 64 bands of 2 rows: verified,
    they stay apart; unverified, every candidate pair is merged."""
    c = code_corpus(n_unique=60, n_near=0, n_exact=0, n_empty=0, n_medium=8, seed=21)
    t = {d[0]: d[1] for d in c.docs}
    loose = {"num_perm": 128, "bands": 64, "rows": 2}
    sig, _ = signatures([(i, t[i]) for p in c.medium_pairs for i in p], loose)
    keys = band_keys(sig, 64, 2)
    for k, (a, b) in enumerate(c.medium_pairs):
        assert 0.5 <= ref_jaccard(t[a], t[b]) <= 0.65
        assert (keys[2 * k] == keys[2 * k + 1]).any(), "the pair must collide in LSH"
    verified = near_dedup(c.docs, loose)
    assert verified.n_dropped == 0
    assert verified.stats["candidate_pairs"] >= len(c.medium_pairs)
    unverified = near_dedup(c.docs, {**loose, "verify": False})
    for a, b in c.medium_pairs:
        assert (a in unverified.dropped) or (b in unverified.dropped)
        loser = a if a in unverified.dropped else b
        # without verification the reported similarity is the MinHash estimate
        assert abs(unverified.dropped[loser]["jaccard"] - ref_jaccard(t[a], t[b])) < 0.15


def test_chains_keep_verified_neighbours():
    """A~B and B~C above the threshold, A~C below: one cluster (connected components over
    verified edges), and the file not similar to the survivor names B as its neighbour."""
    c = code_corpus(n_unique=60, n_near=0, n_exact=0, n_empty=0, n_chains=6, seed=8)
    t = {d[0]: d[1] for d in c.docs}
    cfg = {"num_perm": 128, "bands": 64, "rows": 2}    # every A~B, B~C pair is a candidate
    res = near_dedup(c.docs, cfg)
    open_chains = 0
    for a, b, cc in c.chains:
        assert ref_jaccard(t[a], t[b]) >= 0.7 and ref_jaccard(t[b], t[cc]) >= 0.7
        members = [a, b, cc]
        kept = [i for i in members if i not in res.dropped]
        assert len(kept) == 1
        for i in members:
            if i == kept[0]:
                continue
            info = res.dropped[i]
            assert info["duplicate_of"] == kept[0]
            assert ref_jaccard(t[i], t[info["neighbour"]]) >= 0.7
            assert info["jaccard"] == pytest.approx(ref_jaccard(t[i], t[info["neighbour"]]))
            if ref_jaccard(t[i], t[kept[0]]) < 0.7:
                assert info["neighbour"] == b
                open_chains += 1
    assert open_chains >= 1, "the corpus must hold a chain whose ends are not similar"
    assert not [i for i in res.dropped if i not in c.planted()]


def test_flood_of_copies_stays_linear():
    """Hundreds of copies share every bucket: each is paired with at most bucket_window others
    (not all pairs), and they still form one cluster behind the preferred copy."""
    c = code_corpus(n_unique=30, n_near=0, n_exact=0, n_empty=0, seed=2)
    text = c.docs[0][1]
    copies = [(f"copy{k:04d}", text, k % 50, ("MIT",) if k == 123 else ()) for k in range(400)]
    res = near_dedup(c.docs + copies, {"bucket_window": 16})
    assert res.stats["largest_bucket"] == 401
    assert res.stats["candidate_pairs"] <= 401 * 16
    assert res.kept_ids == [d[0] for d in c.docs if d[0] != c.docs[0][0]] + ["copy0123"]
    assert all(v["duplicate_of"] == "copy0123" and v["jaccard"] == 1.0
               for v in res.dropped.values())


def test_survivor_preference():
    rng = random.Random(4)
    from data_prep.dedup.synthetic import mutate_lines, random_code
    vocab = [f"name{k}" for k in range(3000)]
    lines = random_code(rng, 120, vocab)
    text = lambda: "\n".join(mutate_lines(lines, 0.01, rng, vocab))  # noqa: E731
    docs = [("a", text(), 1000, ("GPL-3.0",), "x/a.py"),
            ("b", text(), 5, ("MIT",), "x/b.py"),
            ("c", text(), 20, ("Apache-2.0",), "x/y/c.py"),
            ("d", text(), 100000, (), "d.py")]
    res = near_dedup(docs)
    assert res.kept_ids == ["c"]                 # permissive first, then most stars
    assert {v["duplicate_of"] for v in res.dropped.values()} == {"c"}
    assert near_dedup(docs, {"preference": ["stars"]}).kept_ids == ["d"]
    assert near_dedup(docs, {"preference": ["path", "id"]}).kept_ids == ["d"]
    tie = [("z", docs[0][1], 7, ("MIT",), ""), ("m", docs[1][1], 7, ("MIT",), "")]
    assert near_dedup(tie).kept_ids == ["m"]     # full tie: smallest id
    same = [("z", "x = 1\n", 1, ("MIT",)), ("k", "x = 1\n", 9, ("MIT",)), ("q", "x = 1\n", 9, ())]
    res = exact_dedup(same)
    assert res.kept_ids == ["k"]
    assert res.dropped == {"z": {"duplicate_of": "k", "neighbour": "k", "jaccard": 1.0},
                           "q": {"duplicate_of": "k", "neighbour": "k", "jaccard": 1.0}}


def test_files_without_tokens_are_kept():
    docs = [("e1", ""), ("e2", ""), ("w1", "   \n\t\n"), ("w2", "   \n\t\n"), ("p", "+-*/ () {}"),
            ("s1", "x = y"), ("s2", "x = y\n")]
    res = near_dedup(docs)
    assert res.kept_ids == ["e1", "e2", "w1", "w2", "p", "s1"]
    assert res.dropped == {"s2": {"duplicate_of": "s1", "neighbour": "s1", "jaccard": 1.0}}
    assert res.stats["no_tokens"] == 5 and res.stats["docs"] == 7 and res.stats["kept"] == 6
    empty = near_dedup([])
    assert empty.kept_ids == [] and empty.dropped == {} and empty.stats["docs"] == 0


def test_deterministic_and_order_independent(corpus, near_result):
    again = near_dedup(corpus.docs)
    assert without_timings(again) == without_timings(near_result)
    shuffled = list(corpus.docs)
    random.Random(1).shuffle(shuffled)
    other = near_dedup(shuffled)
    assert other.dropped == near_result.dropped
    assert sorted(other.kept_ids) == sorted(near_result.kept_ids)
    assert near_dedup(corpus.docs, {"cache_shingles": False}).dropped == near_result.dropped


def test_input_forms_agree(corpus):
    pairs = corpus.near_pairs[:5]
    members = {i for p in pairs for i in p}
    others = [d for d in corpus.docs if d[0] not in corpus.planted()][:80]
    sub = others + [d for d in corpus.docs if d[0] in members]
    records = [Record(id=i, content=t, lang="python", repo="r", path=p, stars=s, licenses=lic)
               for i, t, s, lic, p in sub]
    dicts = [{"id": i, "text": t, "stars": s, "licenses": list(lic), "path": p}
             for i, t, s, lic, p in sub]
    base = near_dedup(sub)
    assert base.n_dropped == 5
    assert near_dedup(records).dropped == base.dropped == near_dedup(dicts).dropped
    with pytest.raises(ValueError, match="duplicate document id"):
        near_dedup(sub + sub[:1])


def test_exact_dedup(corpus):
    res = exact_dedup(corpus.docs)
    assert set(res.dropped) <= {i for p in corpus.exact_pairs for i in p}
    for a, b in corpus.exact_pairs:
        assert (a in res.dropped) != (b in res.dropped)
    # The blank files: "\n\n" vs "  " vs ... only identical bytes are duplicates.
    assert res.stats["dropped"] == len(corpus.exact_pairs) == res.n_dropped
    assert res.stats["kept"] == len(corpus.docs) - len(corpus.exact_pairs)
    assert without_timings(exact_dedup(list(reversed(corpus.docs))))["dropped"] == res.dropped


def test_progress_reporting(corpus, capsys):
    calls = []
    near_dedup(corpus.docs[:50], progress=lambda stage, done, total: calls.append((stage, done,
                                                                                   total)))
    assert calls and calls[-1][0].startswith("near") and calls[0][1] <= calls[0][2]
    exact_dedup(corpus.docs[:50], progress=lambda *a: calls.append(a))
    near_dedup(corpus.docs[:50], progress=True)         # tqdm on stderr; nothing on stdout
    assert capsys.readouterr().out == ""


def test_signature_shape_and_empty_rows():
    sig, has = signatures([("a", "def f(x): return x"), ("b", ""), ("c", "  ;; ")],
                          {"num_perm": 64, "bands": 8, "rows": 8})
    assert sig.shape == (3, 64) and sig.dtype == np.uint32
    assert has.tolist() == [True, False, False]
