"""`isoflop generate`: sampling options, run-directory errors, streaming text, and greedy decoding through a
real checkpoint equal to the argmax decoding of the full forward pass."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from analysis import synthetic
from common.files import atomic_write
from common.run_contract import CHECKPOINT_DIR, CONFIG_FILE, read_summary, write_summary
from common.validation import ConfigError
from launch.cli import main
from modeling.config import ModelConfig
from modeling.transformer import Transformer
from train import budget as budget_lib
from train import config as config_lib
from train.checkpoint import Checkpointer
from train.data.build import TOKENIZER_FILE
from train.data.tokenizer import EOD_ID, ByteTokenizer, train_bpe
from train.generate import (LoadedRun, Sampling, TextStream, check_request, choose, encode_prompt, generate_text,
                            load_run, run_tokenizer, stream_tokens)
from train.loop import build_training

TINY = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
RUN_OVERRIDES = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=64",
                 "model.tie_embeddings=false", "data.seq_len=32", "data.batch_size=2", "budget.flops=1e9"]
CHECKPOINT_STEP = 3


def make_run_dir(path: pathlib.Path, overrides=()) -> pathlib.Path:
    """A run directory as training leaves it: config.yaml, an initialised model saved through the trainer's
    Checkpointer at step 3, and a contract summary."""
    config = config_lib.load(TINY, RUN_OVERRIDES + list(overrides))
    path.mkdir(parents=True)
    atomic_write(path / CONFIG_FILE, config_lib.dump_yaml(config))
    setup = build_training(config, budget_lib.plan_for(config).steps)
    checkpointer = Checkpointer(path / CHECKPOINT_DIR, keep=1, async_save=False)
    checkpointer.save(CHECKPOINT_STEP, setup.params, setup.opt_state, {"position": 0}, {"wall_seconds": 0.0})
    checkpointer.close()
    write_summary(path, synthetic.run_summary(path.name, 2e4, 1e6, 3.0, 1e9))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("generate") / "run")


def greedy_by_full_forward(model, ids, max_tokens, stop_id=None) -> list[int]:
    """Argmax decoding with no cache: the whole sequence through the model at every step (padded to one
    length so it compiles once; causal, so the padding cannot reach the logits read)."""
    forward = nnx.jit(lambda model, tokens: model(tokens))
    length = len(ids) + max_tokens
    sequence, out = list(ids), []
    for _ in range(max_tokens):
        padded = jnp.asarray([sequence + [0] * (length - len(sequence))])
        token = int(jnp.argmax(forward(model, padded)[0, len(sequence) - 1]))
        if token == stop_id:
            break
        out.append(token)
        sequence.append(token)
    return out


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("sampling, max_tokens, seed, message", [
    (Sampling(temperature=-0.5), 4, 0, "--temperature: -0.5 must be >= 0"),
    (Sampling(temperature=float("nan")), 4, 0, "--temperature: nan must be a finite number >= 0"),
    (Sampling(temperature=float("inf")), 4, 0, "--temperature: inf must be a finite number >= 0"),
    (Sampling(top_k=0), 4, 0, "--top-k: 0 must be an integer >= 1"),
    (Sampling(top_p=0.0), 4, 0, "--top-p: 0.0 must be in (0.0, 1.0]"),
    (Sampling(top_p=1.5), 4, 0, "--top-p: 1.5 must be in (0.0, 1.0]"),
    (Sampling(), 0, 0, "--max-tokens: 0 must be an integer >= 1"),
    (Sampling(), 4, -1, "--seed: -1 must be an integer >= 0"),
])
def test_bad_sampling_options_are_one_line_each(sampling, max_tokens, seed, message):
    with pytest.raises(ConfigError) as err:
        check_request(sampling, max_tokens, seed)
    assert err.value.problems == [message]


def test_good_options_pass():
    check_request(Sampling(temperature=0.7, top_k=1, top_p=1.0), 1, 0)


@pytest.mark.parametrize("argv, message", [
    (["--top-k", "0"], "argument --top-k: must be an integer > 0 (got '0')"),
    (["--temperature", "nan"], "argument --temperature: must be a finite number (got 'nan')"),
    (["--temperature", "-1"], "--temperature: -1.0 must be >= 0"),
    (["--top-p", "2"], "--top-p: 2.0 must be in (0.0, 1.0]"),
    (["--max-tokens", "0"], "argument --max-tokens: must be an integer > 0 (got '0')"),
])
def test_cli_rejects_bad_options_in_one_line_before_output(run_dir, capsys, argv, message):
    assert exit_code(["generate", str(run_dir), "--prompt", "hi", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"isoflop generate: {message}\n"


def exit_code(argv) -> int:
    """The CLI's exit status, whether argparse exits (a value it cannot parse) or the command returns."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


def test_missing_or_incomplete_run_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "no-config").mkdir()
    (tmp_path / "no-checkpoint").mkdir()
    config = config_lib.load(TINY, RUN_OVERRIDES)
    atomic_write(tmp_path / "no-checkpoint" / CONFIG_FILE, config_lib.dump_yaml(config))
    (tmp_path / "empty-checkpoints").mkdir()
    atomic_write(tmp_path / "empty-checkpoints" / CONFIG_FILE, config_lib.dump_yaml(config))
    (tmp_path / "empty-checkpoints" / CHECKPOINT_DIR).mkdir()
    expected = {
        "absent": "is not a directory",
        "no-config": "is not an isoflop run directory (no config.yaml)",
        "no-checkpoint": "has no checkpoints/ (training has not saved a checkpoint)",
        "empty-checkpoints": "has no complete checkpoint yet",
    }
    for name, message in expected.items():
        assert exit_code(["generate", str(tmp_path / name), "--prompt", "x"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and message in err, (name, err)
    assert not (tmp_path / "no-checkpoint" / CHECKPOINT_DIR).exists()  # nothing was written


# ----------------------------------------------------------------------------- choosing tokens


def test_choose_greedy_top_k_and_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.2]]))
    keys = jax.random.split(jax.random.key(0), 200)

    def draws(sampling):
        return {int(choose(logits, key, sampling)[0]) for key in keys}

    assert int(choose(logits, keys[0], Sampling())[0]) == 0
    assert draws(Sampling(temperature=1.0)) == {0, 1, 2}
    assert draws(Sampling(temperature=1.0, top_k=2)) == {0, 1}
    assert draws(Sampling(temperature=1.0, top_k=1)) == {0}
    assert draws(Sampling(temperature=1.0, top_p=0.8)) == {0, 1}  # 0.5 + 0.3 reaches 0.8
    assert draws(Sampling(temperature=1.0, top_p=0.5)) == {0}
    assert draws(Sampling(temperature=1.0, top_p=0.51)) == {0, 1}
    assert draws(Sampling(temperature=1.0, top_k=300)) == {0, 1, 2}  # k beyond the vocabulary cuts nothing


def test_text_stream_holds_back_a_split_character():
    stream = TextStream(ByteTokenizer())
    pieces = [stream.push(token) for token in "aé".encode()]
    assert pieces == ["a", "", "é"] and stream.flush() == ""
    stream = TextStream(ByteTokenizer())
    assert stream.push(0xC3) == "" and stream.flush() == "\ufffd"  # an unfinished character at the end


def test_prompt_starts_after_an_end_of_document():
    assert list(encode_prompt(ByteTokenizer(), "hi")) == [EOD_ID, ord("h"), ord("i")]
    assert list(encode_prompt(ByteTokenizer(), "")) == [EOD_ID]


def test_cached_greedy_stream_equals_full_forward_argmax():
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32),
                        nnx.Rngs(0))
    ids = [0, 5, 9, 17]
    assert list(stream_tokens(model, ids, 10)) == greedy_by_full_forward(model, ids, 10)


def test_sampled_stream_is_seeded():
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32),
                        nnx.Rngs(0))
    sampling = Sampling(temperature=1.0, top_p=0.9)
    a = list(stream_tokens(model, [1, 2], 8, sampling, seed=1))
    assert a == list(stream_tokens(model, [1, 2], 8, sampling, seed=1))
    assert a != list(stream_tokens(model, [1, 2], 8, sampling, seed=2))


# ----------------------------------------------------------------------------- through a run directory


def test_greedy_generation_from_a_checkpoint_is_deterministic_and_the_full_forward_argmax(run_dir):
    pieces = []
    first = generate_text(run_dir, "def ", 12, write=pieces.append)
    second = generate_text(run_dir, "def ", 12)
    assert first["ids"] == second["ids"] and first["step"] == CHECKPOINT_STEP
    assert len(set(first["ids"])) > 1  # untied embeddings: not the tied model's echo of its last token
    model = load_run(run_dir).model
    assert first["ids"] == greedy_by_full_forward(model, encode_prompt(ByteTokenizer(), "def "), 12, stop_id=EOD_ID)
    assert "".join(pieces) == "def " + first["text"]


def test_restored_weights_are_the_saved_ones(run_dir):
    config = config_lib.load(run_dir / CONFIG_FILE)
    saved = build_training(config, budget_lib.plan_for(config).steps).params  # what make_run_dir saved
    restored = nnx.split(load_run(run_dir).model)[1]
    assert jax.tree.structure(saved) == jax.tree.structure(restored)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_streams_the_prompt_and_its_continuation(run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", "x = ", "--max-tokens", "5"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("x = ") and out.endswith("\n")
    assert f"from checkpoint step {CHECKPOINT_STEP}" in err


def test_context_longer_than_the_model_is_refused(run_dir):
    with pytest.raises(ConfigError, match="exceed model.max_seq_len=64"):
        generate_text(run_dir, "x" * 60, 10)


def test_a_bpe_run_finds_its_tokenizer_in_the_data_cache_its_summary_names(tmp_path):
    entry = tmp_path / "cache-entry"
    entry.mkdir()
    train_bpe(["def f(x):\n    return x + 1\n"] * 50, vocab_size=300).save(entry / TOKENIZER_FILE)
    config = config_lib.load(TINY, RUN_OVERRIDES + ["data.tokenizer=bpe", "model.vocab_size=300"])
    run = tmp_path / "run"
    run.mkdir()
    summary = synthetic.run_summary("run", 2e4, 1e6, 3.0, 1e9)
    write_summary(run, dataclasses.replace(summary, data={"source": "stdlib", "cache_path": str(entry)}))
    tokenizer = run_tokenizer(LoadedRun(run, config, None, 0))
    assert tokenizer.kind == "bpe" and tokenizer.decode(tokenizer.encode("def f(x)")) == "def f(x)"
    (entry / TOKENIZER_FILE).unlink()
    with pytest.raises(ConfigError, match="tokenizer file .* is missing"):
        run_tokenizer(LoadedRun(run, config, None, 0))


def test_a_run_on_pre_tokenized_data_has_no_tokenizer(tmp_path):
    config = config_lib.load(TINY, RUN_OVERRIDES + ["data.source=tokens", "data.path=tokens.bin",
                                                   "data.token_dtype=uint16"])
    with pytest.raises(ConfigError, match="pre-tokenized data"):
        run_tokenizer(LoadedRun(tmp_path, config, None, 0))


@pytest.mark.slow
def test_a_trained_run_generates_and_is_benchmarked_into_its_summary(tmp_path, monkeypatch, capsys):
    """End to end: `isoflop train` a tiny run, generate from it, benchmark it into its summary."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = tmp_path / "run"
    train_overrides = [*RUN_OVERRIDES, "budget.flops=2e9", "run.checkpoint_every=5", "run.eval_every=5"]
    assert main(["train", str(TINY), *train_overrides, "--out", str(run)]) == 0
    assert main(["generate", str(run), "--prompt", "import ", "--max-tokens", "8"]) == 0
    out, _ = capsys.readouterr()
    assert "import " in out
    assert main(["bench", "infer", str(run), "--batch", "1,2", "--prompt-len", "8", "--gen-len", "4",
                 "--repeats", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = read_summary(run)
    assert summary.inference["checkpoint_step"] == summary.steps and "recorded under `inference`" in err
    assert [row["batch_size"] for row in summary.inference["results"]] == [1, 2]
