"""Seeded synthetic code corpora with planted duplicates, for tests and benchmarks."""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

_KEYWORDS = ["def", "return", "if", "else", "for", "in", "while", "self", "None", "import", "class"]


def _ident(rng: random.Random) -> str:
    first = rng.choice(string.ascii_letters + "_")
    return first + "".join(rng.choice(string.ascii_lowercase + string.digits + "_")
                           for _ in range(rng.randint(3, 11)))


def _line(rng: random.Random, names: list[str]) -> str:
    kind = rng.random()
    a, b, c = (rng.choice(names) for _ in range(3))
    if kind < 0.3:
        return f"    {a} = {b}({c}, {rng.randint(0, 999)})"
    if kind < 0.5:
        return f"    if {a} > {b}: {c} += {rng.randint(1, 99)}"
    if kind < 0.7:
        return f"    for {a} in {b}.{c}(): {rng.choice(names)}.append({a})"
    if kind < 0.85:
        return f"    {a}.{b} = {c}[{rng.randint(0, 9)}] * {rng.choice(names)}"
    return f"    return {a}({b}, {c})"


def random_code(rng: random.Random, n_lines: int, vocab: list[str]) -> list[str]:
    """Lines of a plausible Python-like file with identifiers drawn from vocab."""
    names = rng.sample(vocab, min(len(vocab), 40))
    lines: list[str] = []
    while len(lines) < n_lines:
        lines.append(f"def {rng.choice(names)}({rng.choice(names)}, {rng.choice(names)}):")
        for _ in range(rng.randint(3, 9)):
            lines.append(_line(rng, names))
        lines.append("")
    return lines[:n_lines]


def mutate_lines(lines: list[str], fraction: float, rng: random.Random,
                 vocab: list[str]) -> list[str]:
    """A copy with about `fraction` of the lines replaced by fresh random lines."""
    out = list(lines)
    names = rng.sample(vocab, min(len(vocab), 40))
    k = max(1, round(fraction * len(out)))
    for i in rng.sample(range(len(out)), min(k, len(out))):
        out[i] = _line(rng, names)
    return out


@dataclass
class SyntheticCorpus:
    docs: list[tuple]                                   # (id, text, stars, licenses, path)
    near_pairs: list[tuple[str, str]] = field(default_factory=list)    # (original, copy)
    exact_pairs: list[tuple[str, str]] = field(default_factory=list)
    empty_ids: list[str] = field(default_factory=list)
    families: list[list[str]] = field(default_factory=list)   # original first, then its copies
    chains: list[list[str]] = field(default_factory=list)     # each a copy of the one before
    medium_pairs: list[tuple[str, str]] = field(default_factory=list)  # about `medium` lines apart

    def planted(self) -> set[str]:
        """Every id that has a planted near or exact duplicate."""
        out = {i for p in self.near_pairs + self.exact_pairs for i in p}
        out.update(i for g in self.families + self.chains for i in g)
        return out


_LICENSES = [("MIT",), ("Apache-2.0",), ("GPL-3.0",), (), ("BSD-3-Clause",), ("LGPL-2.1",)]


def code_corpus(n_unique: int = 300, n_near: int = 40, n_exact: int = 10, n_empty: int = 3,
                seed: int = 0, mutate: float = 0.03, lines: tuple[int, int] = (60, 160),
                n_families: int = 0, family_size: int = 4, n_chains: int = 0,
                n_medium: int = 0, medium: float = 0.15, chain_mutate: float = 0.06
                ) -> SyntheticCorpus:
    """n_unique unrelated files; n_near of them get a near-duplicate copy (about `mutate` of its
    lines replaced) and n_exact an identical copy; n_families get family_size - 1 copies each,
    n_chains a copy of a copy (each with about `chain_mutate` of the lines replaced: the ends fall
    below 0.7), n_medium a copy with about `medium` of its lines replaced (Jaccard about 0.55);
    plus n_empty empty or blank files. Ids are shuffled so that originals and copies interleave."""
    rng = random.Random(seed)
    vocab = [_ident(rng) for _ in range(5000)] + _KEYWORDS
    base = [random_code(rng, rng.randint(*lines), vocab) for _ in range(n_unique)]
    docs: list[tuple] = []
    n_total = (n_unique + n_near + n_exact + n_empty + n_families * (family_size - 1)
               + 2 * n_chains + n_medium)
    names = [f"f{k:06d}" for k in range(n_total)]
    rng.shuffle(names)
    it = iter(names)

    def add(text: str) -> str:
        ident = next(it)
        docs.append((ident, text, rng.randint(0, 500), rng.choice(_LICENSES),
                     f"src/{ident}.py"))
        return ident

    ids = [add("\n".join(b) + "\n") for b in base]
    corpus = SyntheticCorpus(docs)
    picks = iter(rng.sample(range(n_unique), n_near + n_exact + n_families + n_chains + n_medium))

    def copy_of(lines_: list[str], fraction: float) -> tuple[list[str], str]:
        out = mutate_lines(lines_, fraction, rng, vocab)
        return out, add("\n".join(out) + "\n")

    for _ in range(n_near):
        k = next(picks)
        corpus.near_pairs.append((ids[k], copy_of(base[k], mutate)[1]))
    for _ in range(n_exact):
        k = next(picks)
        corpus.exact_pairs.append((ids[k], add(docs[k][1])))
    for _ in range(n_families):
        k = next(picks)
        corpus.families.append([ids[k]] + [copy_of(base[k], mutate)[1]
                                           for _ in range(family_size - 1)])
    for _ in range(n_chains):
        k = next(picks)
        b_lines, b = copy_of(base[k], chain_mutate)
        corpus.chains.append([ids[k], b, copy_of(b_lines, chain_mutate)[1]])
    for _ in range(n_medium):
        k = next(picks)
        corpus.medium_pairs.append((ids[k], copy_of(base[k], medium)[1]))
    for k in range(n_empty):
        corpus.empty_ids.append(add(["", "   \n\t\n", "\n\n", "  "][k % 4]))
    docs.sort(key=lambda d: d[0])
    return corpus
