"""Megatron indexed datasets (``<prefix>.bin`` / ``<prefix>.idx``): a fast atomic writer, a
streaming merge, a small validating reader and an inspector.

The on-disk format is the one megatron-core's ``IndexedDataset`` reads (non-multimodal):

``.bin``
    the tokens of every sequence, concatenated, in the index dtype (little-endian).
``.idx``
    magic ``b"MMIDIDX\\x00\\x00"``; ``<Q`` version (1); ``<B`` dtype code; ``<Q`` sequence count
    S; ``<Q`` document count D; ``int32[S]`` sequence lengths; ``int64[S]`` byte offsets into
    the .bin; ``int64[D]`` document indices (``[0, ..., S]``; D = documents + 1).

The writer stores one sequence per document, exactly as Megatron's ``preprocess_data.py`` does
without ``--split-sentences``; its output is byte-identical to megatron-core's
``IndexedDatasetBuilder`` given the same documents.

Atomicity: both files are written under temporary names beside the destination
(``<prefix>.bin.tmp.<pid>.<tag>``), fsynced, then committed by removing any existing
``<prefix>.idx``, renaming the .bin into place and renaming the .idx last.  A reader that finds
``<prefix>.idx`` therefore always finds the matching, complete ``<prefix>.bin``; a writer that is
killed leaves at most its temporary files (and, if killed in the middle of a commit, a .bin with
no .idx), never a valid-looking half pair or a stale .idx beside a new .bin.  Temporary files of
a killed process are not cleaned up automatically (their owner may live on another node);
``data-prep tokenize``, which runs on one machine, removes those of dead processes of that
machine when it starts (:func:`remove_stale_temp_files`).

This module imports only numpy at import time; torch is used only if the caller passes tensors,
and sentencepiece only when :func:`inspect_dataset` is asked to decode.
"""

from __future__ import annotations

import array
import glob
import os
import secrets
import struct
import sys
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Union

import numpy as np

__all__ = [
    "IndexInfo",
    "InspectionReport",
    "IndexedDatasetWriter",
    "dtype_for_vocab",
    "format_inspection",
    "inspect_dataset",
    "merge_datasets",
    "read_index",
]

_MAGIC = b"MMIDIDX\x00\x00"
_VERSION = 1
_HEADER_SIZE = 9 + 8 + 1 + 8 + 8  # 34 bytes

# megatron.core.datasets.indexed_dataset.DType
_CODE_TO_DTYPE = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
_DTYPE_TO_CODE = {dt.name: code for code, dt in _CODE_TO_DTYPE.items()}

#: Vocabularies below this size are stored as uint16 (megatron's ``DType.optimal_dtype``).
UINT16_VOCAB_LIMIT = 65500

_INT32_MAX = np.iinfo(np.int32).max
_OPEN = "open"
_DEFAULT_BUFFER_BYTES = 32 << 20
_COPY_CHUNK_BYTES = 16 << 20

PathLike = Union[str, "os.PathLike[str]"]


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The token dtype Megatron uses for a vocabulary: uint16 below 65,500 entries, else int32."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    vocab_size = int(vocab_size)
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size > _INT32_MAX + 1:
        raise ValueError(f"vocab_size {vocab_size} does not fit the int32 token dtype")
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def _token_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in "iu" or dt.name not in _DTYPE_TO_CODE:
        supported = ", ".join(n for n, _ in sorted(_DTYPE_TO_CODE.items(), key=lambda x: x[1])
                              if np.dtype(n).kind in "iu")
        raise ValueError(f"unsupported token dtype {dt}; use one of: {supported}")
    return np.dtype(dt.name)  # native, canonical


# --------------------------------------------------------------------------------------------
# atomic file-pair commit
# --------------------------------------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _unlink_quiet(path: Optional[str]) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def remove_stale_temp_files(prefix: PathLike) -> list[str]:
    """Deletes the temporary files of ``prefix`` (``<prefix>.bin.tmp.<pid>.<tag>``, .idx too) that
    processes of this machine left when killed (their pid runs no more); returns their paths.
    Only for writers that run on one machine: a pid names a process of this machine only."""
    removed = []
    base = glob.escape(os.fspath(prefix))
    for path in glob.glob(base + ".bin.tmp.*") + glob.glob(base + ".idx.tmp.*"):
        pid = path.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _unlink_quiet(path)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _PairFiles:
    """Temporary names for a .bin/.idx pair and the commit that moves them into place."""

    def __init__(self, prefix: PathLike) -> None:
        self.prefix = os.fspath(prefix)
        if not self.prefix or self.prefix.endswith(os.sep):
            raise ValueError(f"invalid dataset prefix {self.prefix!r}: expected e.g. out/name")
        self.bin_path = self.prefix + ".bin"
        self.idx_path = self.prefix + ".idx"
        self.directory = os.path.dirname(os.path.abspath(self.bin_path))
        os.makedirs(self.directory, exist_ok=True)
        tag = f"tmp.{os.getpid()}.{secrets.token_hex(3)}"
        self.bin_tmp = f"{self.bin_path}.{tag}"
        self.idx_tmp = f"{self.idx_path}.{tag}"

    def commit(self) -> None:
        """Move both (complete, fsynced) temporary files into place; .idx strictly last."""
        _unlink_quiet(self.idx_path)  # never leave an old .idx beside a new .bin
        _fsync_dir(self.directory)
        os.replace(self.bin_tmp, self.bin_path)
        _fsync_dir(self.directory)
        os.replace(self.idx_tmp, self.idx_path)
        _fsync_dir(self.directory)

    def cleanup(self) -> None:
        _unlink_quiet(self.bin_tmp)
        _unlink_quiet(self.idx_tmp)


def _write_index(path: str, dtype: np.dtype, lengths: np.ndarray, doc_indices: np.ndarray) -> None:
    """Write a complete .idx file to ``path`` and fsync it."""
    lengths = np.ascontiguousarray(lengths, dtype="<i4")
    doc_indices = np.ascontiguousarray(doc_indices, dtype="<i8")
    offsets = np.zeros(len(lengths), dtype="<i8")
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], dtype=np.int64, out=offsets[1:])
    offsets *= dtype.itemsize
    header = (
        _MAGIC
        + struct.pack("<Q", _VERSION)
        + struct.pack("<B", _DTYPE_TO_CODE[dtype.name])
        + struct.pack("<Q", len(lengths))
        + struct.pack("<Q", len(doc_indices))
    )
    with open(path, "wb") as f:
        f.write(header)
        f.write(lengths.view(np.uint8))
        f.write(offsets.view(np.uint8))
        f.write(doc_indices.view(np.uint8))
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------


class IndexedDatasetWriter:
    """Stream documents into a Megatron ``<prefix>.bin/.idx`` pair, atomically.

    ``IndexedDatasetWriter(prefix, vocab_size=None, dtype=None)``: the token dtype is ``dtype``
    if given, else :func:`dtype_for_vocab` of ``vocab_size``, else int32 (Megatron's default).
    Token ids must lie in ``[0, vocab_size)`` (or the dtype's range when no vocab size is given).

    Use as a context manager::

        with IndexedDatasetWriter("out/python_text_document", vocab_size=32000) as w:
            for ids in docs:
                w.add_document(ids)      # list / tuple / numpy array / torch tensor of ints

    Leaving the block normally calls :meth:`finalize` (write the .idx, commit both files);
    leaving it with an exception calls :meth:`abort` (remove the temporary files, write nothing).
    Tokens are gathered in a ``buffer_bytes`` buffer and written in large chunks.

    Every document is checked as it is added: an empty one raises ``ValueError`` (Megatron
    cannot hold one), so does a token id out of range; non-integer tokens raise ``TypeError``.
    The messages name the prefix and the document number. The writer is unchanged by a rejected
    document and may go on. (For a plain ``list`` only the first element's type is checked:
    numpy converts the rest, truncating a stray float as Megatron's builder would; numpy arrays,
    tensors, tuples and other iterables are checked in full.)

    ``allow_empty=True`` lets :meth:`finalize` write a dataset with no documents (which
    megatron-core's mmap reader cannot open); by default that is an error.

    The output is byte-identical to megatron-core's ``IndexedDatasetBuilder`` given
    ``add_document(tokens, [len(tokens)])`` for each document.
    """

    def __init__(
        self,
        prefix: PathLike,
        vocab_size: Optional[int] = None,
        dtype: Any = None,
        *,
        buffer_bytes: int = _DEFAULT_BUFFER_BYTES,
        allow_empty: bool = False,
    ) -> None:
        if dtype is not None:
            self.dtype = _token_dtype(dtype)
        elif vocab_size is not None:
            self.dtype = dtype_for_vocab(vocab_size)
        else:
            self.dtype = np.dtype(np.int32)
        info = np.iinfo(self.dtype)
        if vocab_size is not None:
            if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
                raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
            vocab_size = int(vocab_size)
            if vocab_size <= 0:
                raise ValueError(f"vocab_size must be positive, got {vocab_size}")
            if vocab_size - 1 > info.max:
                raise ValueError(
                    f"vocab_size {vocab_size} does not fit dtype {self.dtype} "
                    f"(max token id {info.max}); use dtype=None to pick one from the vocab size"
                )
        self.vocab_size = vocab_size
        # exclusive upper bound on token ids
        self._limit = int(vocab_size) if vocab_size is not None else int(info.max) + 1
        self.allow_empty = allow_empty

        self._files = _PairFiles(prefix)
        self.prefix = self._files.prefix
        self.bin_path = self._files.bin_path
        self.idx_path = self._files.idx_path

        self._buf = np.empty(
            max(1, int(buffer_bytes) // self.dtype.itemsize), dtype=self.dtype.newbyteorder("<")
        )
        self._cap = self._buf.shape[0]
        # unsigned view of the buffer: one argmax bounds list input below the limit and, for a
        # signed dtype, above 0 (negatives read as huge)
        self._ubuf = self._buf.view(f"<u{self.dtype.itemsize}")
        self._list_check = self._limit <= int(info.max) or self.dtype.kind == "i"
        self._plans: Dict[np.dtype, Any] = {}
        self._pos = 0
        self._lengths: List[int] = []
        self.num_tokens = 0
        self._state = _OPEN
        self._bin = open(self._files.bin_tmp, "wb")

    # -- properties ---------------------------------------------------------------------------

    @property
    def num_documents(self) -> int:
        return len(self._lengths)

    @property
    def closed(self) -> bool:
        return self._state is not _OPEN

    # -- context manager ----------------------------------------------------------------------

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    def __del__(self) -> None:  # dropped without finalize: leave nothing behind
        try:
            if getattr(self, "_state", None) is _OPEN:
                self.abort()
        except Exception:
            pass

    # -- documents ----------------------------------------------------------------------------

    def _doc_name(self) -> str:
        return f"document #{len(self._lengths)} (0-based) of {self.prefix}"

    def _empty_error(self) -> ValueError:
        return ValueError(
            f"{self._doc_name()} is empty (0 tokens): Megatron indexed datasets cannot hold "
            f"empty documents; skip empty documents before add_document() "
            f"(e.g. `if len(ids): writer.add_document(ids)`)"
        )

    def _type_error(self, what: str) -> TypeError:
        return TypeError(f"{self._doc_name()}: token ids must be integers, got {what}")

    def _range_error(self, values: Any) -> ValueError:
        limit = self._limit
        bad = [(i, int(v)) for i, v in enumerate(np.asarray(values, dtype=object).tolist())
               if not 0 <= int(v) < limit]
        pos, value = bad[0] if bad else (-1, None)
        bound = (f"vocab_size={self.vocab_size}" if self.vocab_size is not None
                 else f"dtype {self.dtype}")
        return ValueError(
            f"{self._doc_name()}: token id {value} at position {pos} is out of range "
            f"[0, {limit}) for {bound}; check the tokenizer / vocab size "
            f"({len(bad)} bad token(s) in this document)"
        )

    def _check_plan(self, dt: np.dtype):
        """How to range-check an input array of integer dtype ``dt`` (computed once per dtype).

        Returns (mode, view_dtype): 0 no check needed, 1 max only, 2 max of the unsigned view
        (negatives map above the limit), 3 min and max.
        """
        if dt.kind not in "iu":
            return None
        info = np.iinfo(dt)
        limit = self._limit
        if info.min >= 0 and info.max < limit:
            plan = (0, None)
        elif dt.kind == "u":
            plan = (1, None)
        elif limit <= int(info.max) + 1:
            plan = (2, np.dtype(f"u{dt.itemsize}"))
        else:
            plan = (3, None)
        self._plans[dt] = plan
        return plan

    def _as_array(self, tokens: Any) -> np.ndarray:
        if isinstance(tokens, np.ndarray):
            return tokens
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(tokens, torch.Tensor):
            try:
                return tokens.numpy()  # CPU tensors without grad: a zero-copy view
            except (RuntimeError, TypeError):
                pass
            try:
                return tokens.detach().cpu().numpy()
            except TypeError:  # e.g. bfloat16
                raise self._type_error(f"a tensor of dtype {tokens.dtype}") from None
        # tuples, ranges, array.array, iterators, ...: array.array converts strictly
        try:
            return np.frombuffer(array.array("q", tokens), dtype=np.int64)
        except OverflowError:
            raise self._range_error(list(tokens)) from None
        except TypeError as e:
            raise self._type_error(f"{type(tokens).__name__} ({e})") from None

    def add_document(self, tokens: Any) -> None:
        """Append one document (stored as one sequence). See the class docstring for errors."""
        if self._state is not _OPEN:
            raise RuntimeError(f"{self.prefix}: writer is already {self._state}")
        tp = type(tokens)
        if tp is np.ndarray:
            arr = tokens
        elif tp is list:
            # Fast path for the common case (a tokenizer's list of ints): numpy converts the
            # list straight into the buffer (rejecting ints outside the dtype's range), then
            # one argmax checks the vocabulary bound. Element types are checked on the
            # first element only (numpy would truncate a float further on, as Megatron does).
            n = len(tokens)
            if n == 0:
                raise self._empty_error()
            pos = self._pos
            end = pos + n
            if end <= self._cap:
                first = tokens[0]
                if not isinstance(first, (int, np.integer)):
                    raise self._type_error(f"a list of {type(first).__name__}")
                try:
                    self._buf[pos:end] = tokens
                except OverflowError:
                    raise self._range_error(tokens) from None
                except (TypeError, ValueError) as e:
                    raise self._type_error(f"a list containing non-integers ({e})") from None
                if self._list_check:
                    u = self._ubuf[pos:end]
                    if u[u.argmax()] >= self._limit:  # argmax: far less call overhead than max
                        raise self._range_error(self._buf[pos:end])
                self._pos = end
                self._lengths.append(n)
                self.num_tokens += n
                return
            arr = self._as_array(tokens)  # rare: at a buffer boundary
        else:
            arr = self._as_array(tokens)

        if arr.ndim != 1:
            if arr.size == 0:
                raise self._empty_error()
            raise ValueError(
                f"{self._doc_name()}: expected a 1-D sequence of token ids, got shape "
                f"{tuple(arr.shape)}"
            )
        n = arr.shape[0]
        if n == 0:
            raise self._empty_error()
        plan = self._plans.get(arr.dtype)
        if plan is None:
            plan = self._check_plan(arr.dtype)
            if plan is None:
                raise self._type_error(f"an array of dtype {arr.dtype}")
        mode = plan[0]
        if mode:
            limit = self._limit
            # arr[arr.argmax()] rather than arr.max(): same result, a fraction of the per-call
            # overhead of a ufunc reduction, which dominates for document-sized arrays
            if mode == 1:
                bad = arr[arr.argmax()] >= limit
            elif mode == 2:
                u = arr.view(plan[1])
                bad = u[u.argmax()] >= limit
            else:
                bad = arr[arr.argmin()] < 0 or arr[arr.argmax()] >= limit
            if bad:
                raise self._range_error(arr)
        if n > _INT32_MAX:
            raise ValueError(f"{self._doc_name()} has {n} tokens; at most {_INT32_MAX} fit")

        pos = self._pos
        end = pos + n
        if end > self._cap:
            self._flush()
            pos, end = 0, n
            if n > self._cap:  # larger than the whole buffer: write it directly
                self._bin.write(np.ascontiguousarray(arr, dtype=self._buf.dtype).view(np.uint8))
                self._lengths.append(n)
                self.num_tokens += n
                return
        self._buf[pos:end] = arr
        self._pos = end
        self._lengths.append(n)
        self.num_tokens += n

    def add_documents(self, documents: Iterable[Any]) -> None:
        """``add_document`` for each item of ``documents``."""
        add = self.add_document
        for doc in documents:
            add(doc)

    def _flush(self) -> None:
        if self._pos:
            self._bin.write(self._buf[: self._pos].view(np.uint8))
            self._pos = 0

    # -- end ----------------------------------------------------------------------------------

    def finalize(self) -> None:
        """Flush, write the .idx, fsync both and commit them (.idx last). Idempotent."""
        if self._state == "finalized":
            return
        if self._state is not _OPEN:
            raise RuntimeError(f"{self.prefix}: cannot finalize, writer was {self._state}")
        try:
            if not self._lengths and not self.allow_empty:
                raise ValueError(
                    f"{self.prefix}: no documents were added; nothing written "
                    f"(pass allow_empty=True to write an empty dataset)"
                )
            self._flush()
            self._bin.flush()
            os.fsync(self._bin.fileno())
            self._bin.close()
            lengths = np.array(self._lengths, dtype=np.int32)
            doc_indices = np.arange(len(lengths) + 1, dtype=np.int64)
            _write_index(self._files.idx_tmp, self.dtype, lengths, doc_indices)
            self._files.commit()
        except BaseException:
            self.abort()
            raise
        self._state = "finalized"
        self._buf = None

    def abort(self) -> None:
        """Discard everything written so far: close and remove the temporary files."""
        if self._state == "finalized":
            return
        self._state = "aborted"
        try:
            self._bin.close()
        finally:
            self._files.cleanup()
            self._buf = None


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------


class IndexInfo(NamedTuple):
    dtype: np.dtype
    sequence_lengths: np.ndarray  # int32[S]
    offsets: np.ndarray  # int64[S], byte offsets into the .bin
    document_indices: np.ndarray  # int64[D]


def _strip_suffix(prefix: PathLike) -> str:
    prefix = os.fspath(prefix)
    for suffix in (".idx", ".bin"):
        if prefix.endswith(suffix) and not os.path.exists(prefix + ".idx"):
            return prefix[: -len(suffix)]
    return prefix


def _read_index_full(prefix: PathLike):
    """Parse and check ``<prefix>.idx``; returns (IndexInfo, idx_path, has_modes)."""
    prefix = _strip_suffix(prefix)
    path = prefix + ".idx"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: index file not found (dataset prefix {prefix!r})")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(_HEADER_SIZE)
    if len(header) < len(_MAGIC) or header[: len(_MAGIC)] != _MAGIC:
        raise ValueError(
            f"{path}: not a Megatron indexed-dataset index (bad magic "
            f"{header[:len(_MAGIC)]!r}, expected {_MAGIC!r})"
        )
    if len(header) < _HEADER_SIZE:
        raise ValueError(f"{path}: truncated header ({size} bytes, need {_HEADER_SIZE})")
    (version,) = struct.unpack_from("<Q", header, 9)
    if version != _VERSION:
        raise ValueError(f"{path}: unsupported index version {version} (expected {_VERSION})")
    (code,) = struct.unpack_from("<B", header, 17)
    if code not in _CODE_TO_DTYPE:
        raise ValueError(f"{path}: unknown dtype code {code}")
    dtype = _CODE_TO_DTYPE[code]
    seq_count, doc_count = struct.unpack_from("<QQ", header, 18)
    expected = _HEADER_SIZE + seq_count * 12 + doc_count * 8
    if size < expected:
        raise ValueError(
            f"{path}: truncated index: {size} bytes, but its header ({seq_count} sequences, "
            f"{doc_count} document indices) needs {expected}"
        )
    if size == expected:
        has_modes = False
    elif size == expected + seq_count:  # multimodal: int8 mode per sequence
        has_modes = True
    else:
        raise ValueError(
            f"{path}: {size - expected} unexpected trailing bytes after the index "
            f"({seq_count} sequences, {doc_count} document indices)"
        )
    if doc_count == 0:
        raise ValueError(f"{path}: document index is empty (must start with 0)")

    mm = np.memmap(path, dtype=np.uint8, mode="r")
    lengths = np.frombuffer(mm, dtype="<i4", count=seq_count, offset=_HEADER_SIZE)
    off = _HEADER_SIZE + lengths.nbytes
    offsets = np.frombuffer(mm, dtype="<i8", count=seq_count, offset=off)
    off += offsets.nbytes
    doc_indices = np.frombuffer(mm, dtype="<i8", count=doc_count, offset=off)
    if doc_indices[0] != 0 or doc_indices[-1] != seq_count:
        raise ValueError(
            f"{path}: corrupt document index: starts at {int(doc_indices[0])} and ends at "
            f"{int(doc_indices[-1])}, expected 0 ... {seq_count}"
        )
    if doc_count > 1 and np.any(np.diff(doc_indices) < 0):
        raise ValueError(f"{path}: corrupt document index: not non-decreasing")
    if seq_count and lengths.min() < 0:
        raise ValueError(f"{path}: corrupt index: negative sequence length")
    return IndexInfo(dtype, lengths, offsets, doc_indices), path, has_modes


def read_index(prefix: PathLike) -> IndexInfo:
    """Read ``<prefix>.idx``: ``(dtype, sequence_lengths, offsets, document_indices)``.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file for a missing file, bad magic,
    unsupported version or dtype, truncated or inconsistent index. (A multimodal index's
    per-sequence modes are accepted and ignored.)
    """
    return _read_index_full(prefix)[0]


def _contiguous(info: IndexInfo) -> bool:
    lengths = info.sequence_lengths
    if len(lengths) == 0:
        return True
    expected = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], dtype=np.int64, out=expected[1:])
    expected *= info.dtype.itemsize
    return bool(np.array_equal(expected, info.offsets))


def _expected_bin_bytes(info: IndexInfo) -> int:
    return int(info.sequence_lengths.sum(dtype=np.int64)) * info.dtype.itemsize


# --------------------------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------------------------


def merge_datasets(prefixes: Sequence[PathLike], out_prefix: PathLike) -> Dict[str, Any]:
    """Concatenate the documents of ``prefixes`` (in order) into ``out_prefix``.

    All inputs must share one token dtype. The .bin data is streamed in chunks; the output is
    committed atomically like :class:`IndexedDatasetWriter`'s. Sequences-within-documents
    structure is preserved. ``out_prefix`` may be one of the inputs (it is replaced at the end).
    Returns ``{"prefix", "dtype", "documents", "sequences", "tokens"}``.
    """
    prefixes = [_strip_suffix(p) for p in prefixes]
    if not prefixes:
        raise ValueError("merge_datasets: no input prefixes given")
    infos = []
    for p in prefixes:
        info, idx_path, has_modes = _read_index_full(p)
        if has_modes:
            raise ValueError(f"{idx_path}: multimodal datasets (sequence modes) cannot be merged")
        if not _contiguous(info):
            raise ValueError(f"{idx_path}: sequence offsets are not contiguous; cannot merge")
        bin_path = p + ".bin"
        if not os.path.exists(bin_path):
            raise FileNotFoundError(f"{bin_path}: data file not found (beside {idx_path})")
        want = _expected_bin_bytes(info)
        have = os.path.getsize(bin_path)
        if have != want:
            raise ValueError(
                f"{bin_path}: {have} bytes, but {idx_path} describes {want} bytes of tokens"
            )
        infos.append(info)
    dtypes = {info.dtype for info in infos}
    if len(dtypes) > 1:
        listing = ", ".join(f"{p}.idx ({info.dtype})" for p, info in zip(prefixes, infos))
        raise ValueError(f"merge_datasets: token dtypes differ: {listing}; re-tokenize or "
                         f"convert the inputs to one dtype before merging")
    dtype = infos[0].dtype

    lengths = np.concatenate([info.sequence_lengths for info in infos]).astype(np.int32)
    doc_parts = [np.zeros(1, dtype=np.int64)]
    seq_offset = 0
    for info in infos:
        doc_parts.append(info.document_indices[1:] + seq_offset)
        seq_offset += len(info.sequence_lengths)
    doc_indices = np.concatenate(doc_parts)
    sizes = [_expected_bin_bytes(info) for info in infos]
    del infos  # release the index memmaps before commit

    files = _PairFiles(out_prefix)
    try:
        with open(files.bin_tmp, "wb") as out:
            for p, nbytes in zip(prefixes, sizes):
                with open(p + ".bin", "rb") as src:
                    remaining = nbytes
                    while remaining:
                        chunk = src.read(min(_COPY_CHUNK_BYTES, remaining))
                        if not chunk:
                            raise ValueError(f"{p}.bin: shrank while being merged")
                        out.write(chunk)
                        remaining -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        _write_index(files.idx_tmp, dtype, lengths, doc_indices)
        files.commit()
    except BaseException:
        files.cleanup()
        raise
    return {
        "prefix": files.prefix,
        "dtype": dtype.name,
        "documents": len(doc_indices) - 1,
        "sequences": len(lengths),
        "tokens": int(lengths.sum(dtype=np.int64)),
    }


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------


def _decode(tokenizer_model: PathLike, ids: List[int]) -> str:
    try:
        import sentencepiece as spm  # lazy: only needed to decode
    except ImportError as e:  # pragma: no cover - sentencepiece is a dependency
        raise ImportError("decoding needs the 'sentencepiece' package") from e
    path = os.fspath(tokenizer_model)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: sentencepiece model not found")
    try:
        sp = spm.SentencePieceProcessor(model_file=path)
    except Exception as e:  # sentencepiece raises OSError/RuntimeError for a bad model file
        raise ValueError(f"{path}: cannot load sentencepiece model ({e})") from None
    n = sp.get_piece_size()
    bad = [i for i in ids if i >= n]
    if bad:
        raise ValueError(
            f"{path}: token id {bad[0]} is outside this tokenizer's vocabulary ({n} pieces); "
            f"is this the tokenizer the dataset was made with?"
        )
    return sp.decode(ids)


class InspectionReport(dict):
    """:func:`inspect_dataset`'s result: a dict whose ``str()`` is the printable report."""

    def __str__(self) -> str:
        return format_inspection(self)


def inspect_dataset(
    prefix: PathLike,
    tokenizer_model: Optional[PathLike] = None,
    sample: int = 0,
    max_tokens: int = 64,
) -> InspectionReport:
    """Summarise a dataset. Returns a dict (an :class:`InspectionReport`) whose ``str()`` is
    the human-readable report of :func:`format_inspection`, so ``print(inspect_dataset(p))``
    prints it.

    Keys: path, bin_path, idx_path, dtype, documents, sequences, tokens, bin_bytes, idx_bytes,
    doc_length_min/mean/max (``None`` when there are no documents), problems (list of str:
    e.g. a .bin whose size disagrees with the index), and when the dataset has documents:
    sample (document number), sample_length, sample_tokens (its first ``max_tokens`` ids) and,
    with ``tokenizer_model`` (a sentencepiece model path), sample_text.
    """
    info, idx_path, _ = _read_index_full(prefix)
    prefix = idx_path[: -len(".idx")]
    bin_path = prefix + ".bin"
    lengths = info.sequence_lengths
    docs = len(info.document_indices) - 1
    cum = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, dtype=np.int64, out=cum[1:])
    doc_lengths = cum[info.document_indices[1:]] - cum[info.document_indices[:-1]]
    tokens = int(cum[-1])

    problems: List[str] = []
    bin_bytes = os.path.getsize(bin_path) if os.path.exists(bin_path) else None
    want = tokens * info.dtype.itemsize
    if bin_bytes is None:
        problems.append(f"{bin_path}: missing")
    elif bin_bytes != want:
        problems.append(f"{bin_path}: {bin_bytes} bytes, the index describes {want}")
    if not _contiguous(info):
        problems.append(f"{idx_path}: sequence offsets are not contiguous")

    result = InspectionReport({
        "path": prefix,
        "bin_path": bin_path,
        "idx_path": idx_path,
        "dtype": info.dtype.name,
        "documents": docs,
        "sequences": len(lengths),
        "tokens": tokens,
        "bin_bytes": bin_bytes,
        "idx_bytes": os.path.getsize(idx_path),
        "doc_length_min": int(doc_lengths.min()) if docs else None,
        "doc_length_mean": float(doc_lengths.mean()) if docs else None,
        "doc_length_max": int(doc_lengths.max()) if docs else None,
        "problems": problems,
    })
    if docs:
        if not -docs <= sample < docs:
            raise ValueError(f"{prefix}: sample document {sample} out of range (0..{docs - 1})")
        sample %= docs
        first_seq = int(info.document_indices[sample])
        length = int(doc_lengths[sample])
        count = min(length, max(0, int(max_tokens)))
        ids: List[int] = []
        if count and bin_bytes is not None:
            with open(bin_path, "rb") as f:
                f.seek(int(info.offsets[first_seq]))
                ids = np.fromfile(f, dtype=info.dtype.newbyteorder("<"), count=count).tolist()
        result.update(sample=sample, sample_length=length, sample_tokens=ids)
        if tokenizer_model is not None:
            result["sample_text"] = _decode(tokenizer_model, ids)
    return result


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "missing"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_inspection(result: Dict[str, Any]) -> str:
    """Render :func:`inspect_dataset`'s dict as a human-readable report."""
    lines = [
        f"path:       {result['path']}  (.bin {_fmt_bytes(result['bin_bytes'])}, "
        f".idx {_fmt_bytes(result['idx_bytes'])})",
        f"dtype:      {result['dtype']}",
        f"documents:  {result['documents']:,}",
        f"sequences:  {result['sequences']:,}",
        f"tokens:     {result['tokens']:,}",
    ]
    if result["documents"]:
        lines.append(
            f"doc length: min {result['doc_length_min']:,} / mean "
            f"{result['doc_length_mean']:,.1f} / max {result['doc_length_max']:,} tokens"
        )
    else:
        lines.append("doc length: - (no documents)")
    if "sample" in result:
        shown = len(result["sample_tokens"])
        lines.append(
            f"sample:     document {result['sample']} ({result['sample_length']:,} tokens, "
            f"first {shown} shown): {result['sample_tokens']}"
        )
        if "sample_text" in result:
            lines.append(f"decoded:    {result['sample_text']!r}")
    for problem in result["problems"]:
        lines.append(f"PROBLEM:    {problem}")
    return "\n".join(lines)
