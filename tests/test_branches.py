"""WSD cooldown branches: a branch from a stable run's checkpoint is the standalone WSD run of its length."""

import dataclasses
import json
import pathlib

import pytest
import yaml

from common.run_contract import read_summary
from train import branches
from train import config as config_lib
from train import loop
from train.budget import plan_for
from train.config import ConfigError

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"
DETERMINISTIC = ("step", "tokens", "train_loss", "eval_loss", "learning_rate", "grad_norm", "flops_6N",
                 "flops_6N_attn", "flops_chinchilla")


def micro_config(tmp_path: pathlib.Path, steps: int, **run) -> config_lib.Config:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        corpus.mkdir()
        for i in range(40):
            (corpus / f"f{i}.py").write_text(TEXT.replace("add", f"add{i}") * 12)
    tree = {
        "model": {"vocab_size": 256, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 32},
        "data": {"source": "text", "path": str(corpus), "seq_len": 32, "batch_size": 8, "eval_tokens": 512,
                 "eval_fraction": 0.1, "cache_dir": str(tmp_path / "cache")},
        "optimizer": {"learning_rate": 1e-2, "schedule": "wsd", "warmup_rule": "steps", "warmup_steps": 4,
                      "decay_fraction": 0.25},
        "budget": {"tokens": 256 * steps},
        "run": {"log_every": 2, "eval_every": 6, "checkpoint_every": 5, "keep_checkpoints": 1, **run},
        "hardware": {"peak_flops_per_second": 1e11},
    }
    return config_lib.from_dict(tree)


def rows(run_dir: pathlib.Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{key: json.loads(line).get(key) for key in DETERMINISTIC} for line in lines]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the budget.s .* epochs")
def test_branches_equal_standalone_wsd_runs_bitwise(tmp_path):
    lengths = (24, 36)  # decay starts 18 and 27; the stable run keeps both though keep_checkpoints = 1
    standalone = {}
    for steps in lengths:
        config = micro_config(tmp_path, steps)
        standalone[steps] = tmp_path / f"standalone-{steps}"
        assert loop.train(config, standalone[steps]).status == "completed"
    first = micro_config(tmp_path, lengths[0])
    points = tuple(branches.branch_step(micro_config(tmp_path, steps), steps) for steps in lengths)
    assert points == (18, 27)
    stable = branches.stable_config(first, "stable", max(points), 256, points)
    stable_dir = tmp_path / "stable"
    assert loop.train(stable, stable_dir).role == "stable"
    for steps in lengths:
        config = micro_config(tmp_path, steps, branch_from=str(stable_dir))
        summary = loop.train(config, tmp_path / f"branch-{steps}")
        reference = read_summary(standalone[steps])
        assert rows(tmp_path / f"branch-{steps}") == rows(standalone[steps])  # every logged loss, bitwise
        assert summary.final_eval_loss == reference.final_eval_loss
        assert summary.final_train_loss == reference.final_train_loss
        assert (summary.steps, summary.tokens, summary.flops) == (reference.steps, reference.tokens, reference.flops)
        assert (summary.role, summary.branch_of, summary.branch_step) == ("branch", "stable", steps - steps // 4)
        assert reference.role == "run" and reference.warmup_steps == summary.warmup_steps == 4


def test_a_branch_needs_wsd_and_a_warmup_that_does_not_depend_on_the_length(tmp_path):
    config = micro_config(tmp_path, 24)
    tree = config_lib.to_dict(config)
    tree["run"]["branch_from"] = str(tmp_path / "stable")
    tree["optimizer"].update(schedule="cosine", warmup_rule="fraction")
    with pytest.raises(ConfigError) as err:
        config_lib.from_dict(tree)
    assert any(line.startswith("optimizer.schedule: 'cosine', but a branch") for line in err.value.problems)
    assert any(line.startswith("optimizer.warmup_rule: 'fraction' makes the warmup depend") for line in err.value.problems)


def test_a_branch_refuses_a_stable_run_of_another_model_or_without_its_branch_point(tmp_path):
    branch = micro_config(tmp_path, 24, branch_from=str(tmp_path / "stable"))
    steps = plan_for(branch).steps
    with pytest.raises(ConfigError, match="holds no config.yaml"):
        branches.check_parent(branch, steps)
    (tmp_path / "stable").mkdir()
    other = branches.stable_config(micro_config(tmp_path, 24), "stable", 18, 256, (17,))
    other = dataclasses.replace(other, model=dataclasses.replace(other.model, d_model=64))
    (tmp_path / "stable" / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(other)))
    with pytest.raises(ConfigError) as err:
        branches.check_parent(branch, steps)
    assert any("trained with other model.d_model" in line for line in err.value.problems)
    assert any("does not keep step 18" in line for line in err.value.problems)
