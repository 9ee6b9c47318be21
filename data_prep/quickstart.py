"""The quickstart's data step at toy scale: the embedded corpus (standard library and installed
packages, read as repositories) -> repository documents -> tokenizer -> indexed datasets."""
from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from .grouping import repository_documents
from .indexed import IndexedDatasetWriter, inspect_dataset
from .sources import TreeSource, embedded_roots
from .tokenizer import Tokenizer, train_tokenizer


def write_language_datasets(docs, tokenizer: Tokenizer, out_dir: Path, batch: int = 256) -> dict:
    """Tokenizes documents (grouped by language, in order) into <out>/<lang>_text_document,
    appending end-of-document; returns {lang: {"documents", "tokens", "prefix"}}."""
    by_lang = defaultdict(list)
    for d in docs:
        by_lang[d.lang].append(d.text)
    stats = {}
    eod = tokenizer.special.eod
    for lang in sorted(by_lang):
        prefix = out_dir / f"{lang}_text_document"
        texts = by_lang[lang]
        with IndexedDatasetWriter(str(prefix), vocab_size=tokenizer.vocab_size) as w, \
                tqdm(total=sum(map(len, texts)), unit="B", unit_scale=True,
                     desc=f"tokenize {lang}", leave=False) as bar:
            for i in range(0, len(texts), batch):
                chunk = texts[i:i + batch]
                for ids in tokenizer.encode(chunk):
                    ids.append(eod)
                    w.add_document(ids)
                bar.update(sum(map(len, chunk)))
        stats[lang] = {"documents": w.num_documents, "tokens": w.num_tokens, "prefix": str(prefix)}
    return stats


def run_quickstart_data(out: str | os.PathLike, *, max_mb: float = 8.0, fraction: float = 0.035,
                        vocab_size: int = 4096, seed: int = 1234) -> dict:
    out = Path(out)
    t0 = time.time()
    # A stable hash-chosen share of every repository, so the sample spans the standard library
    # and the installed packages (Python, C, C++, ...) rather than the first folders.
    source = TreeSource(embedded_roots(), sample_fraction=fraction,
                        max_total_bytes=int(max_mb * 2**20), max_file_bytes=256 << 10)
    records = list(tqdm(source, desc="read embedded corpus", unit=" files"))
    langs = Counter(r.lang for r in records)
    print(f"corpus: {len(records)} files, {sum(len(r.content) for r in records) / 2**20:.1f} MB "
          f"of text from {len({r.repo for r in records})} repositories; languages {dict(langs)}")
    docs = list(repository_documents(records, seed=seed))
    print(f"grouped into {len(docs)} repository documents")
    model = train_tokenizer((d.text for d in docs), out / "tokenizer", vocab_size, seed=seed)
    tok = Tokenizer(model)
    print(f"tokenizer: {model} ({tok.vocab_size} pieces)")
    stats = write_language_datasets(docs, tok, out / "phase1")
    manifest = {
        "stage": "quickstart-data", "seconds": round(time.time() - t0, 1),
        "read": source.read, "dropped": dict(source.dropped), "files": len(records),
        "documents": len(docs), "tokenizer": str(model), "datasets": stats,
    }
    assert source.read == len(records) + sum(source.dropped.values()), "file accounting broken"
    tmp = out / f".manifest.json.tmp.{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / "manifest.json")
    for lang, s in stats.items():
        print(inspect_dataset(s["prefix"], tokenizer_model=str(model), sample=0, max_tokens=48))
    return manifest
