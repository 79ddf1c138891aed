"""`prepare(config)`: the trainer's one call for data — find, tokenize once (cached), open, check.

The cache key hashes what determines the cached bytes: the source kind, the corpus root and its file list
with sizes and mtimes, the tokenizer and vocabulary size, eval_fraction and jsonl_field (text sources),
the token dtype (token files) and `cache.CACHE_FORMAT_VERSION`. seq_len and batch_size are not in it:
windows and batches are cut at load time, so every model shape shares one entry.

`tokens` source: the file is used in place (several files are joined in the cache); its last
`eval_fraction` of tokens is the eval split, the rest is train.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import time
import warnings

import numpy as np

from train.config import Config, ConfigError, validate
from train.data import cache, loader
from train.data.build import TOKENIZER_FILE, build_text, build_tokens, check_token_files
from train.data.corpus import Corpus, find_corpus
from train.data.errors import DataError
from train.data.tokenizer import TextTokenizer, load_tokenizer

log = logging.getLogger(__name__)


class RepetitionWarning(UserWarning):
    """The budget needs more than one pass over the unique training tokens."""


def epochs_for(tokens: float, unique_tokens: int) -> float:
    """Passes over the unique train tokens that `tokens` training tokens take; warns above one, since
    repeated data is worth less than fresh data and bends the scaling law (Muennighoff et al. 2023)."""
    epochs = float(tokens) / unique_tokens
    if epochs > 1:
        warnings.warn(
            f"the budget's {tokens:.4g} tokens are {epochs:.3g} epochs of the {unique_tokens:,} unique train "
            "tokens; repeated data changes scaling (Muennighoff et al. 2023)",
            RepetitionWarning,
            stacklevel=2,
        )
    return epochs


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Opened train/eval token memmaps plus everything the loop and the summary need to know about them."""

    train_tokens: np.ndarray  # memmap, uint16 or uint32
    eval_tokens: np.ndarray
    vocab_size: int  # ids present are < vocab_size (the tokenizer's size; model.vocab_size for token files)
    seq_len: int
    batch_size: int
    eval_token_target: int  # data.eval_tokens
    tokenizer: TextTokenizer | None  # None for pre-tokenized data
    tokenizer_path: pathlib.Path | None
    cache_path: pathlib.Path
    fingerprint: str  # SHA-256 of the train tokens: ties a saved iterator state to its data
    meta: dict  # the cache entry's meta.json
    reused_cache: bool
    prepare_seconds: float

    @property
    def unique_tokens(self) -> int:
        """Distinct training targets per epoch: train windows × seq_len (the split's tail is unused)."""
        return loader.window_count(len(self.train_tokens), self.seq_len) * self.seq_len

    def epochs(self, tokens: float) -> float:
        return epochs_for(tokens, self.unique_tokens)

    def train_iterator(self, seed: int, process_index: int = 0, process_count: int = 1) -> loader.TrainIterator:
        dataset = loader.train_dataset(self.train_tokens, self.seq_len, self.batch_size, seed,
                                       process_index, process_count)
        identity = {"seed": seed, "seq_len": self.seq_len, "batch_size": self.batch_size,
                    "process_index": process_index, "process_count": process_count, "data": self.fingerprint}
        return loader.TrainIterator(dataset, identity)

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        return loader.eval_batches(self.eval_tokens, self.seq_len, self.batch_size, self.eval_token_target)

    @property
    def eval_tokens_used(self) -> int:
        n_batches, rows = loader.eval_layout(len(self.eval_tokens), self.seq_len, self.batch_size,
                                             self.eval_token_target)
        return n_batches * rows * self.seq_len

    def decode(self, ids) -> str:
        if self.tokenizer is None:
            raise DataError("data.source=tokens: pre-tokenized data has no tokenizer to decode with")
        return self.tokenizer.decode(ids)

    def summary(self) -> dict:
        """JSON-ready facts for summary.json / logs."""
        return {
            "source": self.meta["source"],
            "tokenizer": self.meta["tokenizer"],
            "vocab_size": self.vocab_size,
            "files": self.meta["files"],
            "corpus_bytes": self.meta["corpus_bytes"],
            "train_tokens": len(self.train_tokens),
            "eval_tokens": len(self.eval_tokens),
            "unique_tokens": self.unique_tokens,
            "eval_tokens_used": self.eval_tokens_used,
            "cache_path": str(self.cache_path),
            "cache_reused": self.reused_cache,
            "cache_build_seconds": self.meta["build_seconds"],  # when the entry was built, maybe by another run
            "prepare_seconds": round(self.prepare_seconds, 3),
        }


def _entry_name(corpus: Corpus, config: Config) -> str:
    data = config.data
    material = {"source": corpus.kind, "root": str(corpus.root), "files": corpus.file_stats()}
    if corpus.kind == "tokens":
        material |= {"token_dtype": data.token_dtype, "vocab_size": config.model.vocab_size}
        label = f"tokens-{data.token_dtype}"
    else:
        vocab = config.model.vocab_size if data.tokenizer == "bpe" else 256
        material |= {"tokenizer": data.tokenizer, "vocab_size": vocab, "eval_fraction": data.eval_fraction}
        if corpus.kind == "jsonl":
            material["jsonl_field"] = data.jsonl_field
        label = f"{corpus.kind}-{data.tokenizer}{vocab}"
    return f"{label}-{cache.content_key(material)[:16]}"


def _open(path: pathlib.Path, dtype: str) -> np.ndarray:
    return np.memmap(path, dtype=np.dtype(dtype), mode="r")


def _check_windows(split: str, tokens: np.ndarray, seq_len: int, hint: str) -> None:
    if len(tokens) < seq_len + 1:
        raise DataError(f"data.seq_len: {seq_len} is longer than the data: a window needs {seq_len + 1} tokens "
                        f"and the {split} split has {len(tokens)} ({hint})")


def check(config: Config) -> Corpus:
    """What `prepare` would reject, found without reading or writing data: the config, the corpus
    (exists, holds files, each readable) and, for token files, their sizes against data.token_dtype."""
    problems = validate(config)
    if problems:
        raise ConfigError(problems)
    corpus = find_corpus(config.data)
    for path in corpus.files:
        if not os.access(path, os.R_OK):
            raise DataError(f"{corpus.field}: cannot read {path} (permission denied)")
    if corpus.kind == "tokens":
        check_token_files(corpus, config.data.token_dtype)
    else:
        corpus.file_stats()
    return corpus


def prepare(config: Config) -> Dataset:
    """Find the corpus, build or reuse its cache entry, and open it; every data problem is one DataError."""
    started = time.perf_counter()
    data = config.data
    corpus = check(config)
    root = cache.cache_root(data.cache_dir)
    name = _entry_name(corpus, config)
    if corpus.kind == "tokens":
        build = functools.partial(build_tokens, corpus, data.token_dtype, config.model.vocab_size)
    else:
        build = functools.partial(build_text, corpus, data.tokenizer, config.model.vocab_size)
    if not (root / name / cache.META_FILE).is_file():
        log.info("tokenizing %s corpus at %s (%d files) into %s",
                 corpus.kind, corpus.root, len(corpus.files), root / name)
    entry, meta, built = cache.get_or_build(root, name, build)
    if not built:
        log.info("reusing token cache %s", entry)

    tokenizer = tokenizer_path = None
    if corpus.kind == "tokens":
        tokens_path = pathlib.Path(meta["tokens_path"])
        tokens = _open(tokens_path if tokens_path.is_absolute() else entry / tokens_path, meta["token_dtype"])
        n_eval = int(len(tokens) * data.eval_fraction)
        train_tokens, eval_tokens = tokens[: len(tokens) - n_eval], tokens[len(tokens) - n_eval :]
        fingerprint = f"{meta['tokens_sha256']}:{len(train_tokens)}"
        hint = f"{len(tokens)} tokens in {corpus.root}, data.eval_fraction={data.eval_fraction}"
    else:
        train_tokens = _open(entry / "train.bin", meta["token_dtype"])
        eval_tokens = _open(entry / "eval.bin", meta["token_dtype"])
        fingerprint = meta["train_sha256"]
        if data.tokenizer == "bpe":
            tokenizer_path = entry / TOKENIZER_FILE
        tokenizer = load_tokenizer(data.tokenizer, tokenizer_path)
        hint = f"{meta['files']} files, data.eval_fraction={data.eval_fraction}"
    _check_windows("train", train_tokens, data.seq_len, hint)
    _check_windows("eval", eval_tokens, data.seq_len, hint)
    return Dataset(
        train_tokens=train_tokens,
        eval_tokens=eval_tokens,
        vocab_size=int(meta["vocab_size"]),
        seq_len=data.seq_len,
        batch_size=data.batch_size,
        eval_token_target=data.eval_tokens,
        tokenizer=tokenizer,
        tokenizer_path=tokenizer_path,
        cache_path=entry,
        fingerprint=fingerprint,
        meta=meta,
        reused_cache=not built,
        prepare_seconds=time.perf_counter() - started,
    )
