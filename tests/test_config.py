"""Config loading (extends, overrides) and one-line validation errors that name the field."""

import pytest

from launch.cli import main
from train import config as cfg


def problems_of(tree) -> list[str]:
    with pytest.raises(cfg.ConfigError) as err:
        cfg.from_dict(tree)
    return err.value.problems


@pytest.mark.parametrize(
    "tree, field, hint",
    [
        ({"model": {"d_modle": 64}}, "model.d_modle", "did you mean 'd_model'"),
        ({"optimiser": {}}, "optimiser", "did you mean 'optimizer'"),
        ({"model": {"d_model": 100, "n_heads": 3}}, "model.n_heads", "does not divide model.d_model"),
        ({"model": {"attention": "gqa", "n_heads": 4, "n_kv_heads": 3}}, "model.n_kv_heads", "does not divide"),
        ({"model": {"attention": "gqa"}}, "model.n_kv_heads", "required"),
        ({"model": {"attention": "flash"}}, "model.attention", "mha, gqa, mqa, sliding_window, linear"),
        ({"model": {"ffn": "moe2"}}, "model.ffn", "swiglu, geglu, gelu, relu2"),
        ({"model": {"precision": "fp16"}}, "model.precision", "fp32, bf16_mixed, bf16, fp8"),
        ({"model": {"remat": "some"}}, "model.remat", "none, full, dots_saveable"),
        ({"model": {"d_ff": 0}}, "model.d_ff", "positive"),
        ({"model": {"n_layers": -2}}, "model.n_layers", "positive"),
        ({"model": {"attention": "sliding_window", "window": 0}}, "model.window", "positive"),
        ({"model": {"attention": "sliding_window"}}, "model.window", "positive"),
        ({"model": {"window": 8}}, "model.window", "only used by attention=sliding_window"),
        ({"model": {"d_model": "wide"}}, "model.d_model", "expected an integer"),
        ({"data": {"seq_len": 512}}, "data.seq_len", "exceeds model.max_seq_len"),
        ({"budget": {"flops": 1e15, "tokens": 1e9}}, "budget", "exactly one"),
        ({"budget": {"convention": "7N"}}, "budget.convention", "6N, 6N_attn, chinchilla"),
        ({"optimizer": {"schedule": "linear"}}, "optimizer.schedule", "cosine, wsd, constant"),
        ({"data": {"source": "web"}}, "data.source", "stdlib, text, jsonl, tokens"),
    ],
)
def test_validation_names_field(tree, field, hint):
    problems = problems_of(tree)
    assert any(p.startswith(field + ":") and hint in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_every_problem_is_reported_at_once():
    problems = problems_of({"model": {"d_model": 100, "n_heads": 3, "ffn": "x", "d_ff": 0}})
    assert len(problems) == 3


def test_extends_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  d_model: 64\n  n_heads: 2\nbudget:\n  tokens: 1000\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nmodel:\n  n_layers: 3\n")
    config = cfg.load(tmp_path / "child.yaml", ["model.d_model=96", "optimizer.learning_rate=1e-3",
                                                "budget.flops=3e14", "budget.tokens=null"])
    assert (config.model.d_model, config.model.n_heads, config.model.n_layers) == (96, 2, 3)
    assert config.optimizer.learning_rate == 1e-3 and config.budget.flops == 3e14 and config.budget.tokens is None


def test_round_trip_through_yaml(tmp_path):
    config = cfg.from_dict({"model": {"attention": "sliding_window", "window": 8, "layer_pattern": ["local", "global"],
                                      "rope_scaling": {"factor": 8}}})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.dump_yaml(config))
    assert cfg.load(path) == config


def test_cli_exits_2_with_one_line_per_problem(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: 100\n  n_heads: 3\n  attention: flash\n")
    assert main(["count", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("isoflop count: model.") for line in lines)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load(tmp_path / "nope.yaml")
    (tmp_path / "ok.yaml").write_text("{}\n")
    with pytest.raises(cfg.ConfigError, match="section.field=value"):
        cfg.load(tmp_path / "ok.yaml", ["model.d_model"])


def test_one_config_error_for_every_package():
    """launch/cli.py catches train.config.ConfigError: the toolkit's errors (and the contract's) are that class."""
    from common import validation
    from common.run_contract import ContractError

    assert cfg.ConfigError is validation.ConfigError and issubclass(ContractError, cfg.ConfigError)


def test_extends_cycles_and_non_mapping_paths_are_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(cfg.ConfigError, match="extends: cycle through"):
        cfg.load(tmp_path / "a.yaml")
    tree = {"model": {"d_model": 64}}
    with pytest.raises(cfg.ConfigError, match="goes through a non-mapping field 'd_model'"):
        cfg.apply_overrides(tree, ["model.d_model.x=1"])
    assert tree == {"model": {"d_model": 64}}  # overrides apply to a copy


def test_grid_override_lines_name_their_entry():
    assert cfg.parse_override("model.ffn=gelu", "overrides[3]") == ("model.ffn", "gelu")
    assert cfg.parse_override("budget.tokens=", "overrides[3]") == ("budget.tokens", None)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse_override("model.d_model={a: [", "overrides[3]")
    (line,) = err.value.problems
    assert line.startswith("overrides[3] model.d_model: '{a: [' is not a valid YAML value")
