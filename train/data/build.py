"""Building one cache entry: tokenize a text corpus, or check (and if needed join) pre-tokenized files.

Each builder writes into the empty directory it is given and returns the metadata that `cache.get_or_build`
records as meta.json. Problems that depend only on the data (an empty corpus, an empty split, a token id
outside the vocabulary) are raised here, so nothing is cached for data that cannot be used.
"""

from __future__ import annotations

import hashlib
import pathlib
import time

import numpy as np

from train.data.corpus import Corpus
from train.data.errors import DataError
from train.data.tokenizer import ByteTokenizer, TextTokenizer, token_dtype, train_bpe, write_splits

TOKENIZER_FILE = "tokenizer.json"
SCAN_CHUNK_TOKENS = 1 << 24  # tokens per chunk when checking / joining token files (32-64 MiB)


def build_text(corpus: Corpus, tokenizer_kind: str, vocab_size: int, out: pathlib.Path) -> dict:
    """Tokenize a stdlib/text/jsonl corpus into train.bin and eval.bin (BPE trained on train only)."""
    started = time.perf_counter()
    tokenizer: TextTokenizer = ByteTokenizer()
    if tokenizer_kind == "bpe":
        tokenizer = train_bpe((text for _, text, _ in corpus.documents(("train",))), vocab_size)
        tokenizer.save(out / TOKENIZER_FILE)
    tokenizer_seconds = time.perf_counter() - started
    with open(out / "train.bin", "wb") as train_file, open(out / "eval.bin", "wb") as eval_file:
        writers = write_splits(corpus.documents(), tokenizer, {"train": train_file, "eval": eval_file})
    counts = {split: writer.tokens for split, writer in writers.items()}
    where = f"{corpus.field} ({corpus.kind} corpus at {corpus.root}, {len(corpus.files)} files)"
    if counts["train"] + counts["eval"] == 0:
        raise DataError(f"{where}: empty corpus, 0 tokens (every document is empty)")
    for split, other in (("train", "eval"), ("eval", "train")):
        if counts[split] == 0:
            raise DataError(f"{where}: the {split} split is empty ({_split_rule(corpus, other)}); "
                            f"{_split_remedy(corpus)}")
    return {
        "source": corpus.kind,
        "root": str(corpus.root),
        "files": len(corpus.files),
        "corpus_bytes": sum(path.stat().st_size for path in corpus.files),
        "tokenizer": tokenizer_kind,
        "vocab_size": tokenizer.vocab_size,
        "token_dtype": token_dtype(tokenizer.vocab_size).name,
        "train_tokens": counts["train"],
        "eval_tokens": counts["eval"],
        "train_documents": writers["train"].documents,
        "eval_documents": writers["eval"].documents,
        "train_sha256": writers["train"].sha256.hexdigest(),
        "tokenizer_seconds": round(tokenizer_seconds, 3),
        "build_seconds": round(time.perf_counter() - started, 3),
    }


def _split_rule(corpus: Corpus, other: str) -> str:
    """How documents reached the other split: by position for a single text file, else by hash."""
    if corpus.split_by_position:
        return (f"the file's last data.eval_fraction={corpus.eval_fraction} of bytes, cut at a line break, "
                f"is the eval split, and that left nothing for {'train' if other == 'eval' else 'eval'}")
    unit = "records" if corpus.kind == "jsonl" else "files"
    return f"all {unit} hashed to {other} with data.eval_fraction={corpus.eval_fraction}"


def _split_remedy(corpus: Corpus) -> str:
    if corpus.split_by_position:
        return "add lines to the file or change data.eval_fraction"
    unit = "records" if corpus.kind == "jsonl" else "files"
    return f"add {unit} or change data.eval_fraction"


def check_token_files(corpus: Corpus, dtype_name: str) -> list[int]:
    """Byte sizes of pre-tokenized files, each a whole number of tokens and not all empty (no data read)."""
    dtype = np.dtype(dtype_name)
    sizes = [size for _, size, _ in corpus.file_stats()]
    for path, size in zip(corpus.files, sizes):
        if size % dtype.itemsize:
            raise DataError(f"data.path: {path} has {size} bytes, not a whole number of "
                            f"{dtype.itemsize}-byte {dtype_name} tokens (data.token_dtype)")
    if sum(sizes) == 0:
        raise DataError(f"data.path: empty corpus, {len(corpus.files)} token file(s) with 0 tokens")
    return sizes


def build_tokens(corpus: Corpus, dtype_name: str, vocab_size: int, out: pathlib.Path) -> dict:
    """Check pre-tokenized files (sizes, ids < vocab_size); join several into tokens.bin, keep one in place."""
    started = time.perf_counter()
    dtype = np.dtype(dtype_name)
    sizes = check_token_files(corpus, dtype_name)
    total = sum(sizes) // dtype.itemsize
    if len(corpus.files) == 1:
        tokens_path = corpus.files[0]
    else:
        tokens_path = out / "tokens.bin"
        with open(tokens_path, "wb") as joined:
            for path, size in zip(corpus.files, sizes):
                if size:  # an empty file cannot be memory-mapped
                    for chunk in _chunks(np.memmap(path, dtype=dtype, mode="r")):
                        np.asarray(chunk).tofile(joined)
    tokens = np.memmap(tokens_path, dtype=dtype, mode="r")
    max_token, digest = 0, hashlib.sha256()
    for chunk in _chunks(tokens):
        max_token = max(max_token, int(chunk.max()))
        digest.update(np.asarray(chunk).tobytes())
    if max_token >= vocab_size:
        raise DataError(f"data.path: token id {max_token} found in {corpus.root}, but model.vocab_size is "
                        f"{vocab_size} (ids must be < vocab_size; raise model.vocab_size or check data.token_dtype)")
    return {
        "source": "tokens",
        "root": str(corpus.root),
        "files": len(corpus.files),
        "corpus_bytes": sum(sizes),
        "tokens_path": str(tokens_path) if len(corpus.files) == 1 else tokens_path.name,
        "tokenizer": None,
        "vocab_size": vocab_size,
        "token_dtype": dtype_name,
        "tokens": total,
        "max_token": max_token,
        "tokens_sha256": digest.hexdigest(),
        "build_seconds": round(time.perf_counter() - started, 3),
    }


def _chunks(tokens: np.ndarray):
    for start in range(0, len(tokens), SCAN_CHUNK_TOKENS):
        yield tokens[start : start + SCAN_CHUNK_TOKENS]
