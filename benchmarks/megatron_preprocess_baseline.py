"""The baseline: what Megatron-LM's tools/preprocess_data.py does, for one sentencepiece model.

A pool of worker processes encodes JSONL lines (each worker loads the tokenizer), the main
process feeds megatron-core's IndexedDatasetBuilder, end-of-document appended, dtype chosen by
the vocabulary as Megatron does. Usage: python megatron_preprocess_baseline.py IN.jsonl MODEL OUT_PREFIX WORKERS
"""
import json
import multiprocessing
import sys
import time

import numpy as np
import torch  # noqa: F401  (Megatron's tool imports torch and megatron before it starts)
from megatron.core.datasets import indexed_dataset


class Encoder:
    def __init__(self, model):
        self.model = model

    def initializer(self):
        import sentencepiece as spm
        Encoder.sp = spm.SentencePieceProcessor(model_file=self.model)
        Encoder.eod = Encoder.sp.piece_to_id("<eod>")

    def encode(self, line):
        text = json.loads(line)["content"]
        ids = Encoder.sp.encode(text)
        ids.append(Encoder.eod)
        return ids, len(line)


def main(inp, model, out, workers):
    import sentencepiece as spm
    vocab = spm.SentencePieceProcessor(model_file=model).get_piece_size()
    enc = Encoder(model)
    start = time.time()
    builder = indexed_dataset.IndexedDatasetBuilder(
        out + ".bin", dtype=indexed_dataset.DType.optimal_dtype(vocab))
    with open(inp, encoding="utf-8") as fin, multiprocessing.Pool(workers, initializer=enc.initializer) as pool:
        for ids, _ in pool.imap(enc.encode, fin, 32):
            builder.add_document(np.array(ids, dtype=np.int64), [len(ids)])
    builder.finalize(out + ".idx")
    print(f"baseline wrote {out} in {time.time() - start:.1f}s after imports")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
