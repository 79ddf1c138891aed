"""Data pipeline: corpus split, tokenizers, cache reuse and atomicity, grain determinism and resume, errors."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import train.data.build as build_module
import train.data.corpus as corpus_module
from train.config import Config, ConfigError, DataConfig, ModelConfig
from train.data import EOD_ID, DataError, RepetitionWarning, epochs_for, find_corpus, prepare
from train.data.cache import META_FILE, cache_root
from train.data.corpus import in_eval, stdlib_root


EVAL_FRACTION = 0.3  # 4 of the 20 synthetic files (sha256 of their paths) land in eval


def make_config(cache: pathlib.Path, vocab_size: int = 256, **data) -> Config:
    data.setdefault("seq_len", 16)
    data.setdefault("batch_size", 4)
    data.setdefault("eval_tokens", 64)
    return Config(model=ModelConfig(vocab_size=vocab_size), data=DataConfig(cache_dir=str(cache), **data))


def write_text_corpus(root: pathlib.Path, n_files: int = 20) -> dict[str, str]:
    """n files of distinct lines; returns {relative path: text}."""
    texts = {}
    for i in range(n_files):
        rel = f"sub{i % 3}/doc{i:02d}.txt"
        text = "".join(f"file {i} line {j}: the quick brown fox {i * j}\n" for j in range(12))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        texts[rel] = text
    return texts


def expected_bytes(texts: dict[str, str], split: str, eval_fraction: float) -> np.ndarray:
    """Byte tokens of a split: documents in sorted path order, each followed by EOD."""
    ids = []
    for rel in sorted(texts):
        if in_eval(rel, eval_fraction) == (split == "eval"):
            ids += list(texts[rel].encode("utf-8")) + [EOD_ID]
    return np.array(ids)


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    return root, write_text_corpus(root)


# ----------------------------------------------------------------------------- corpus and split


def test_in_eval_is_stable_and_matches_the_fraction():
    assert in_eval("json/decoder.py", 0.05) == in_eval("json/decoder.py", 0.05)
    held_out = sum(in_eval(f"pkg/module_{i}.py", 0.1) for i in range(20_000))
    assert 0.09 < held_out / 20_000 < 0.11
    # a larger fraction only adds documents to eval, never moves one out
    assert all(in_eval(f"m{i}", 0.3) for i in range(2000) if in_eval(f"m{i}", 0.1))


def test_stdlib_corpus_excludes_site_packages(tmp_path):
    corpus = find_corpus(DataConfig())
    relative = [corpus.relative(p) for p in corpus.files]
    assert corpus.root == stdlib_root() and len(relative) > 500
    assert relative == sorted(relative)
    assert "json/decoder.py" in relative and "os.py" in relative
    assert not [r for r in relative if "site-packages" in r or "dist-packages" in r or not r.endswith(".py")]


def test_byte_tokens_are_the_documents_in_order_with_eod(tmp_path, corpus_dir):
    root, texts = corpus_dir
    ds = prepare(make_config(tmp_path / "cache", source="text", path=str(root), eval_fraction=EVAL_FRACTION))
    for split, tokens in (("train", ds.train_tokens), ("eval", ds.eval_tokens)):
        np.testing.assert_array_equal(np.asarray(tokens), expected_bytes(texts, split, EVAL_FRACTION))
    assert ds.train_tokens.dtype == np.uint16 and ds.vocab_size == 256 and ds.tokenizer_path is None
    assert 0 < ds.meta["eval_documents"] < len(texts)
    # the split depends on paths relative to the corpus root: a copy elsewhere splits the same way
    copy = tmp_path / "elsewhere" / "copy"
    write_text_corpus(copy)
    ds_copy = prepare(make_config(tmp_path / "cache", source="text", path=str(copy), eval_fraction=EVAL_FRACTION))
    np.testing.assert_array_equal(ds_copy.eval_tokens, ds.eval_tokens)


def test_non_utf8_bytes_are_replaced(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "a.txt").write_bytes(b"caf\xe9 ok\n" * 50)  # latin-1, invalid UTF-8
    ds = prepare(make_config(tmp_path / "cache", source="text", path=str(root / "a.txt"), eval_fraction=0.3))
    text = ds.decode(np.concatenate([ds.train_tokens, ds.eval_tokens]))
    assert text.count("caf\ufffd ok\n") == 50 and text.count("\x00") == 2  # one EOD per split's document


def test_single_text_file_splits_its_tail_at_a_line_break(tmp_path):
    path = tmp_path / "one.txt"
    lines = [f"line {i:03d} of a single file\n" for i in range(100)]
    path.write_text("".join(lines))
    ds = prepare(make_config(tmp_path / "cache", source="text", path=str(path), eval_fraction=0.1))
    train_text, eval_text = ds.decode(ds.train_tokens), ds.decode(ds.eval_tokens)
    # 2700 bytes, cut at 90% = byte 2430, just after line 89's line break; each part ends with EOD
    assert train_text == "".join(lines[:90]) + "\x00" and eval_text == "".join(lines[90:]) + "\x00"


def test_a_single_file_too_small_to_split_says_it_is_split_by_position(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("one line only\n")  # the eval tail starts after the last line break: nothing left
    with pytest.raises(DataError, match="eval split is empty") as caught:
        prepare(make_config(tmp_path / "cache", source="text", path=str(path), eval_fraction=0.1))
    message = str(caught.value)
    assert "hashed" not in message and "last data.eval_fraction=0.1 of bytes" in message
    assert "add lines to the file" in message


def test_check_rejects_token_files_before_anything_is_written(tmp_path):
    from train.data import check

    path = tmp_path / "tokens.bin"
    path.write_bytes(b"\x01\x00\x02")
    config = make_config(tmp_path / "cache", source="tokens", token_dtype="uint16", path=str(path))
    with pytest.raises(DataError, match="3 bytes, not a whole number of 2-byte uint16 tokens"):
        check(config)
    assert not (tmp_path / "cache").exists()


def test_a_full_disk_while_building_the_cache_is_one_write_error(tmp_path, corpus_dir, monkeypatch):
    import errno

    from common.files import WriteError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "cache" / "x" / "train.bin"))

    monkeypatch.setattr(build_module, "write_splits", full)
    with pytest.raises(WriteError, match="cannot write .*train.bin: No space left on device"):
        prepare(make_config(tmp_path / "cache", source="text", path=str(corpus_dir[0])))
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_glob_and_directory_pick_the_same_files(tmp_path, corpus_dir):
    root, _ = corpus_dir
    (root / "notes.bin").write_bytes(b"\x01\x02")  # not a text suffix: skipped by the directory walk
    (root / ".hidden.txt").write_text("secret\n")
    from_dir = find_corpus(DataConfig(source="text", path=str(root)))
    from_glob = find_corpus(DataConfig(source="text", path=str(root / "**" / "*.txt")))
    assert from_dir.files == from_glob.files and len(from_dir.files) == 20
    assert from_dir.root == from_glob.root == root.resolve()


def test_jsonl_records_are_documents_split_per_record(tmp_path):
    path = tmp_path / "data.jsonl"
    records = [{"body": f"record number {i} says hello\n", "id": i} for i in range(60)]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    ds = prepare(make_config(tmp_path / "cache", source="jsonl", path=str(path), jsonl_field="body",
                             eval_fraction=0.2, seq_len=8, batch_size=2))
    expected = {"train": "", "eval": ""}
    for line_number, record in enumerate(records, start=1):
        split = "eval" if in_eval(f"data.jsonl:{line_number}", 0.2) else "train"
        expected[split] += record["body"] + "\x00"
    assert ds.decode(ds.train_tokens) == expected["train"] and ds.decode(ds.eval_tokens) == expected["eval"]
    assert expected["eval"]


def test_bpe_is_trained_on_the_train_split_only_and_round_trips(tmp_path, corpus_dir):
    root, texts = corpus_dir
    eval_rel = next(rel for rel in sorted(texts) if in_eval(rel, EVAL_FRACTION))
    marker = "zqjxv" * 40 + "\n"
    (root / eval_rel).write_text(texts[eval_rel] + marker * 30)  # would surely be merged if BPE saw it
    config = make_config(tmp_path / "cache", vocab_size=320, source="text", path=str(root),
                         eval_fraction=EVAL_FRACTION, tokenizer="bpe")
    ds = prepare(config)
    assert ds.tokenizer_path == ds.cache_path / "tokenizer.json" and ds.tokenizer_path.is_file()
    assert ds.vocab_size == 320 and ds.train_tokens.dtype == np.uint16
    vocab = json.loads(ds.tokenizer_path.read_text())["model"]["vocab"]
    assert not [token for token in vocab if "zq" in token or "jx" in token]
    assert any("fox" in token for token in vocab)  # and it did learn the train text
    assert int(np.asarray(ds.train_tokens).max()) < 320
    eval_text = ds.decode(ds.eval_tokens)
    assert eval_text.count("<|endoftext|>") == ds.meta["eval_documents"] and marker * 30 in eval_text
    assert len(ds.train_tokens) < 0.6 * sum(len(t) for t in texts.values())  # it compresses


# ----------------------------------------------------------------------------- cache


def test_cache_is_reused_without_retokenizing(tmp_path, corpus_dir, monkeypatch):
    root, _ = corpus_dir
    config = make_config(tmp_path / "cache", source="text", path=str(root), eval_fraction=EVAL_FRACTION)
    first = prepare(config)
    mtime = (first.cache_path / "train.bin").stat().st_mtime_ns
    assert not first.reused_cache

    def no_build(*args, **kwargs):
        raise AssertionError("re-tokenized a cached corpus")

    monkeypatch.setattr(build_module, "write_splits", no_build)
    again = prepare(config)
    assert again.reused_cache and again.cache_path == first.cache_path
    assert (again.cache_path / "train.bin").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.train_tokens, first.train_tokens)
    # seq_len and batch size are cut at load time: they share the entry
    assert prepare(make_config(tmp_path / "cache", source="text", path=str(root), eval_fraction=EVAL_FRACTION,
                               seq_len=8, batch_size=2)).cache_path == first.cache_path
    monkeypatch.undo()
    # a changed file, or another eval_fraction, is another entry
    edited = sorted(root.rglob("*.txt"))[0]
    edited.write_text(edited.read_text() + "one more line\n")
    changed = prepare(config)
    assert not changed.reused_cache and changed.cache_path != first.cache_path
    other = prepare(make_config(tmp_path / "cache", source="text", path=str(root), eval_fraction=0.5))
    assert other.cache_path not in (first.cache_path, changed.cache_path)


def test_interrupted_build_leaves_nothing_that_is_trusted(tmp_path, corpus_dir, monkeypatch):
    root, _ = corpus_dir
    cache = tmp_path / "cache"
    config = make_config(cache, source="text", path=str(root), eval_fraction=EVAL_FRACTION)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # like Ctrl-C half way through tokenizing

    monkeypatch.setattr(build_module, "write_splits", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(config)
    assert not [p for p in cache.iterdir() if not p.name.endswith(".lock")]
    monkeypatch.undo()
    good = prepare(config)
    # what a SIGKILL leaves: a temp dir, and (say) a final-named dir whose meta.json never got written
    name = good.cache_path.name
    expected = np.asarray(good.train_tokens).copy()
    (cache / f".tmp-{name}-4242").mkdir()
    (good.cache_path / META_FILE).unlink()
    (good.cache_path / "train.bin").write_bytes(b"\x07\x00" * 10)
    rebuilt = prepare(config)
    assert not rebuilt.reused_cache and not list(cache.glob(".tmp-*"))
    np.testing.assert_array_equal(rebuilt.train_tokens, expected)


KILLED_BUILD = """
import pathlib, sys, time
import train.data.tokenizer as tokenizer
from train.config import Config, DataConfig
from train.data import prepare

tokenizer.ENCODE_BATCH_CHARS = 200  # flush often, so the kill lands between two writes
real_flush, flushes = tokenizer.TokenFileWriter.flush, []

def slow_flush(self):
    real_flush(self)
    flushes.append(1)
    if len(flushes) == 3:
        pathlib.Path(sys.argv[3]).write_text("half written")
        time.sleep(60)

tokenizer.TokenFileWriter.flush = slow_flush
prepare(Config(data=DataConfig(source="text", path=sys.argv[1], cache_dir=sys.argv[2], eval_fraction=0.3)))
"""


def test_sigkilled_build_is_not_trusted(tmp_path, corpus_dir):
    root, texts = corpus_dir
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(root), str(cache), str(marker)])
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the child never got half way"
        assert list(cache.glob(".tmp-*/train.bin")) and not list(cache.glob("*/" + META_FILE))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    ds = prepare(make_config(cache, source="text", path=str(root), eval_fraction=EVAL_FRACTION))
    assert not ds.reused_cache and not list(cache.glob(".tmp-*"))
    np.testing.assert_array_equal(ds.train_tokens, expected_bytes(texts, "train", EVAL_FRACTION))


def test_concurrent_prepares_build_once(tmp_path, corpus_dir, monkeypatch):
    root, _ = corpus_dir
    config = make_config(tmp_path / "cache", source="text", path=str(root), eval_fraction=EVAL_FRACTION)
    real_write, builds = build_module.write_splits, []

    def slow_write(*args, **kwargs):
        builds.append(1)
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        return real_write(*args, **kwargs)

    monkeypatch.setattr(build_module, "write_splits", slow_write)
    results = [None, None]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, prepare(config))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and sorted(r.reused_cache for r in results) == [False, True]
    assert results[0].cache_path == results[1].cache_path


def test_cache_root_defaults_to_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(None) == tmp_path / "xdg" / "isoflop"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root(None) == tmp_path / "home" / ".cache" / "isoflop"
    assert cache_root(str(tmp_path / "mine")) == tmp_path / "mine"


# ----------------------------------------------------------------------------- grain batches


@pytest.fixture
def small_dataset(tmp_path):
    """Token i is i: every window is recognisable by its first token (window k starts with k·T)."""
    path = tmp_path / "arange.bin"
    np.arange(1200, dtype=np.uint16).tofile(path)
    return prepare(make_config(tmp_path / "cache", vocab_size=2048, source="tokens", path=str(path),
                               token_dtype="uint16", eval_fraction=0.2))


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_batches_are_shifted_windows_and_an_epoch_covers_every_window(small_dataset):
    ds = small_dataset
    T, B = ds.seq_len, ds.batch_size
    n_windows = (960 - 1) // T  # train split: tokens 0..959
    assert ds.unique_tokens == n_windows * T == 944
    seen = []
    for batch in take(ds.train_iterator(seed=3), -(-n_windows // B)):
        assert batch["inputs"].shape == batch["targets"].shape == (B, T) and batch["inputs"].dtype == np.int32
        starts = batch["inputs"][:, :1]
        np.testing.assert_array_equal(batch["inputs"], starts + np.arange(T))  # window k = tokens [kT, kT+T)
        np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)  # shifted by one token
        assert not (starts % T).any()
        seen += list(starts[:, 0] // T)
    assert sorted(seen[:n_windows]) == list(range(n_windows))  # first epoch: each window exactly once
    assert seen[:n_windows] != list(range(n_windows))  # ...in shuffled order


def test_same_seed_same_batches_other_seed_other_batches(small_dataset):
    a, b, c = (take(small_dataset.train_iterator(seed=s), 5) for s in (7, 7, 8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c))


def test_iterator_state_round_trips_through_json(small_dataset):
    ds = small_dataset
    uninterrupted = take(ds.train_iterator(seed=1), 40)  # runs past an epoch boundary
    first = ds.train_iterator(seed=1)
    take(first, 13)
    saved = json.loads(json.dumps(first.get_state()))
    resumed = ds.train_iterator(seed=1)
    resumed.set_state(saved)
    for expected, got in zip(uninterrupted[13:], take(resumed, 27)):
        np.testing.assert_array_equal(expected["inputs"], got["inputs"])
        np.testing.assert_array_equal(expected["targets"], got["targets"])
    with pytest.raises(DataError, match="seed: saved 1 vs now 2"):
        ds.train_iterator(seed=2).set_state(saved)


def test_processes_read_disjoint_rows_of_the_same_global_batch(small_dataset):
    whole = take(small_dataset.train_iterator(seed=0), 3)
    halves = [take(small_dataset.train_iterator(seed=0, process_index=i, process_count=2), 3) for i in (0, 1)]
    for k in range(3):
        np.testing.assert_array_equal(np.concatenate([halves[0][k]["inputs"], halves[1][k]["inputs"]]),
                                      whole[k]["inputs"])


def test_eval_batches_are_the_fixed_first_windows(small_dataset):
    ds = small_dataset
    batches = ds.eval_batches()
    T, B = ds.seq_len, ds.batch_size
    assert len(batches) == 1 and ds.eval_tokens_used == 64  # eval_tokens=64 = 1 batch of 4 × 16
    expected = 960 + np.arange(B)[:, None] * T + np.arange(T)  # eval split = tokens 960..1199
    np.testing.assert_array_equal(batches[0]["inputs"], expected)
    np.testing.assert_array_equal(batches[0]["targets"], expected + 1)
    np.testing.assert_array_equal(ds.eval_batches()[0]["inputs"], batches[0]["inputs"])


def test_eval_set_is_capped_by_the_split_and_small_splits_give_one_short_batch(tmp_path):
    path = tmp_path / "arange.bin"
    np.arange(1200, dtype=np.uint16).tofile(path)  # eval split: 240 tokens = 14 windows of 16
    common = dict(vocab_size=2048, source="tokens", path=str(path), token_dtype="uint16", eval_fraction=0.2)
    capped = prepare(make_config(tmp_path / "cache", eval_tokens=10_000, **common))
    assert len(capped.eval_batches()) == 3 and capped.eval_tokens_used == 3 * 4 * 16  # 14 windows -> 3 full batches
    short = prepare(make_config(tmp_path / "cache", batch_size=16, **common))
    (batch,) = short.eval_batches()
    assert batch["inputs"].shape == (14, 16) and short.eval_tokens_used == 14 * 16
    np.testing.assert_array_equal(batch["inputs"][-1], 960 + 13 * 16 + np.arange(16))


def test_epochs_warn_only_above_one():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert epochs_for(500, 1000) == 0.5 and epochs_for(1000, 1000) == 1.0
    with pytest.warns(RepetitionWarning, match="2.5 epochs.*Muennighoff"):
        assert epochs_for(2500, 1000) == 2.5


# ----------------------------------------------------------------------------- pre-tokenized files


def test_token_file_split_takes_the_last_fraction(tmp_path):
    tokens = (np.arange(1000) % 300).astype(np.uint32)
    path = tmp_path / "toks.bin"
    tokens.tofile(path)
    ds = prepare(make_config(tmp_path / "cache", vocab_size=300, source="tokens", path=str(path),
                             token_dtype="uint32", eval_fraction=0.1))
    np.testing.assert_array_equal(ds.train_tokens, tokens[:900])
    np.testing.assert_array_equal(ds.eval_tokens, tokens[900:])
    assert ds.vocab_size == 300 and ds.tokenizer is None and ds.unique_tokens == (899 // 16) * 16
    assert ds.meta["max_token"] == 299 and ds.meta["tokens_path"] == str(path.resolve())


def test_several_token_files_are_joined_in_sorted_order(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    parts = [np.full(100, i + 1, dtype=np.uint16) for i in range(3)]
    for i, part in enumerate(parts):
        part.tofile(folder / f"shard{i}.bin")
    ds = prepare(make_config(tmp_path / "cache", source="tokens", path=str(folder), token_dtype="uint16",
                             eval_fraction=0.2))
    np.testing.assert_array_equal(np.concatenate([ds.train_tokens, ds.eval_tokens]), np.concatenate(parts))
    assert len(ds.eval_tokens) == 60


# ----------------------------------------------------------------------------- one-line errors


def assert_one_line(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def test_missing_path(tmp_path):
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="text", path=str(tmp_path / "nope")))
    assert_one_line(excinfo, "data.path", "nope", "does not exist")
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="text", path=str(tmp_path / "*.txt")))
    assert_one_line(excinfo, "data.path", "matches no files")


def test_empty_corpus(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="text", path=str(folder)))
    assert_one_line(excinfo, "data.path", "no *.txt")
    for i in range(5):
        (folder / f"blank{i}.txt").write_text("")
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="text", path=str(folder)))
    assert_one_line(excinfo, "empty corpus, 0 tokens")
    (tmp_path / "zero.bin").write_bytes(b"")
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="tokens", path=str(tmp_path / "zero.bin"), token_dtype="uint16"))
    assert_one_line(excinfo, "empty corpus")
    assert not list((tmp_path / "cache").glob("[!.]*"))  # nothing cached for unusable data


def test_token_at_or_above_vocab_names_the_max(tmp_path):
    path = tmp_path / "t.bin"
    np.array([1, 2, 511, 3] * 50, dtype=np.uint16).tofile(path)
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="tokens", path=str(path), token_dtype="uint16"))
    assert_one_line(excinfo, "token id 511", "model.vocab_size is 256")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="tokens", path=str(tmp_path / "odd.bin"), token_dtype="uint16"))
    assert_one_line(excinfo, "3 bytes", "uint16")


def test_sequence_longer_than_the_data(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("short line\n" * 20)  # 220 bytes: train ~199 tokens, eval ~23
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="text", path=str(path), seq_len=250, eval_fraction=0.1))
    assert_one_line(excinfo, "data.seq_len: 250", "train split has")
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="text", path=str(path), seq_len=64, eval_fraction=0.1))
    assert_one_line(excinfo, "data.seq_len: 64", "eval split has 23")


def test_unreadable_file(tmp_path, corpus_dir, monkeypatch):
    root, texts = corpus_dir
    victim = (root / sorted(texts)[3]).resolve()
    real_open = open

    def guarded_open(path, *args, **kwargs):
        if pathlib.Path(path) == victim:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    if os.geteuid() == 0:  # root reads anything: simulate what chmod 000 does for other users
        monkeypatch.setattr(corpus_module, "open", guarded_open, raising=False)
    else:
        victim.chmod(0)
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="text", path=str(root), eval_fraction=EVAL_FRACTION))
    assert_one_line(excinfo, "data.path: cannot read", str(victim), "Permission denied")


def test_bad_jsonl_lines_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": oops}\n')
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="jsonl", path=str(path)))
    assert_one_line(excinfo, f"{path.resolve()}:3", "not valid JSON")
    path.write_text('{"text": "fine"}\n{"body": "wrong field"}\n')
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="jsonl", path=str(path)))
    assert_one_line(excinfo, f"{path.resolve()}:2", "no field 'text'", "keys: body")
    path.write_text('{"text": 5}\n')
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path / "cache", source="jsonl", path=str(path)))
    assert_one_line(excinfo, ":1", "is int, expected a string")


def test_bad_config_and_seed_are_refused_before_any_work(tmp_path, small_dataset):
    with pytest.raises(ConfigError, match="data.path: required"):
        prepare(make_config(tmp_path / "cache2", source="jsonl"))
    assert not (tmp_path / "cache2").exists()
    with pytest.raises(DataError, match="run.seed"):
        small_dataset.train_iterator(seed=-1)


# ----------------------------------------------------------------------------- the real default corpus


@pytest.fixture(scope="module")
def stdlib_bytes(tmp_path_factory):
    cache = tmp_path_factory.mktemp("stdlib-cache")
    return prepare(make_config(cache, seq_len=128, batch_size=8, eval_tokens=4096))


def test_stdlib_byte_corpus(stdlib_bytes):
    ds = stdlib_bytes
    meta = ds.meta
    assert meta["source"] == "stdlib" and meta["files"] > 500 and meta["corpus_bytes"] > 5_000_000
    total = len(ds.train_tokens) + len(ds.eval_tokens)
    documents = meta["train_documents"] + meta["eval_documents"]
    # one token per byte plus one EOD per non-empty file; an invalid byte becomes U+FFFD (3 bytes)
    assert meta["corpus_bytes"] + documents <= total < meta["corpus_bytes"] + documents + 1000
    assert 0.02 < len(ds.eval_tokens) / total < 0.1
    assert ds.unique_tokens == (len(ds.train_tokens) - 1) // 128 * 128
    batches = ds.eval_batches()
    assert len(batches) == 4 and ds.eval_tokens_used == 4096
    assert "def " in ds.decode(np.concatenate([b["inputs"].ravel() for b in batches]))
    with pytest.warns(RepetitionWarning):
        ds.epochs(2 * ds.unique_tokens)
