"""Bad config and grid-spec input to `isoflop count | train | grid`, through the console script's own entry
point: every case is exit 2, one stderr line per problem naming the command, no traceback, and nothing
created under the working directory (which holds the default run.out_dir and the data cache)."""

import math
import pathlib

import pytest
import yaml

from train.config import CONFIG_ROOT
from cli_run import isoflop

TINY = str(CONFIG_ROOT / "tiny.yaml")
COUNT = ["count", "--no-compiled", TINY]
NAME_RULE = "must be a single name of letters, digits and . _ + = -"


def snapshot(root: pathlib.Path) -> dict:
    """Every path under root with its size and mtime: what a rejected command must leave as it was."""
    return {str(path.relative_to(root)): (path.is_dir(), path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}


def write(path: pathlib.Path, content: str | bytes) -> pathlib.Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def spec(tmp_path: pathlib.Path, **fields) -> pathlib.Path:
    """A small valid sweep spec with `fields` replaced; None removes a field."""
    grid = {"name": "g", "kind": "sweep", "base": "tiny.yaml", "out_dir": "runs",
            "axes": {"optimizer.learning_rate": [0.001, 0.002]}, **fields}
    grid = {key: value for key, value in grid.items() if value is not None}
    return write(tmp_path / "grid.yaml", yaml.safe_dump(grid, sort_keys=False))


def isoflop_spec(tmp_path: pathlib.Path, **fields) -> pathlib.Path:
    """A small valid isoflop spec (two budgets, a two-rung ladder) with `fields` replaced."""
    return spec(tmp_path, **{"kind": "isoflop", "axes": None, "budgets": [1e12, 3e12], "convention": "6N",
                             "ladder": {"d_model": [32, 64], "aspect_ratio": 32, "head_dim": 32}, **fields})


# (id, argv given tmp_path, the pieces expected: one stderr line each, in order)
CASES = [
    # malformed YAML, in a command-line override, a file, or `extends`
    ("override-unclosed-list", lambda t: COUNT + ["model.d_model=[1,"],
     ["override model.d_model: '[1,' is not a valid YAML value"]),
    ("override-python-tag", lambda t: COUNT + ["model.d_model=!!python/object/apply:os.system [echo]"],
     ["override model.d_model: '!!python/object/apply:os.system [echo]' is not a valid YAML value"]),
    ("override-without-equals", lambda t: COUNT + ["model.d_model"], ["override: 'model.d_model' must look like"]),
    ("override-empty-part", lambda t: COUNT + ["model..d_model=3"], ["override: 'model..d_model' must be a dotted"]),
    ("extends-not-a-string", lambda t: ["count", "--no-compiled", write(t / "c.yaml", "extends: 5\n")],
     ["extends: expected the path of a config YAML (e.g. tiny.yaml), got 5"]),
    ("extends-missing", lambda t: ["count", "--no-compiled", write(t / "c.yaml", "extends: nope.yaml\n")],
     ["extends: 'nope.yaml' not found"]),
    ("extends-directory", lambda t: ["count", "--no-compiled", write(t / "c.yaml", "extends: adir\n")],
     ["is a directory, not a YAML file"]),
    ("config-not-utf8", lambda t: ["count", "--no-compiled", write(t / "c.yaml", b"model:\n  d_model: \xff\n")],
     ["c.yaml is not UTF-8 text (byte 18)"]),
    ("config-malformed", lambda t: ["count", "--no-compiled", write(t / "c.yaml", "model: [1,\n")],
     ["c.yaml is not valid YAML"]),
    ("config-python-tag", lambda t: ["count", "--no-compiled", write(t / "c.yaml", "model: !!python/name:os.system\n")],
     ["c.yaml is not valid YAML"]),
    ("config-not-a-mapping", lambda t: ["count", "--no-compiled", write(t / "c.yaml", "- 1\n")],
     ["c.yaml must hold a mapping"]),
    ("config-is-a-directory", lambda t: ["count", "--no-compiled", "adir"], ["config: 'adir' is a directory"]),
    ("train-config-is-a-directory", lambda t: ["train", "adir"], ["config: 'adir' is a directory"]),
    ("config-missing", lambda t: ["count", "--no-compiled", "nope.yaml"], ["config: file 'nope.yaml' does not exist"]),
    ("unknown-key", lambda t: COUNT + ["optimizer.learning_rat=1"], ["optimizer.learning_rat: unknown key (did you mean"]),
    # non-finite and out-of-range numbers
    ("budget-inf", lambda t: COUNT + ["budget.flops=.inf"], ["budget.flops: inf must be a finite number"]),
    ("budget-overflowing-literal", lambda t: COUNT + ["budget.flops=1e400"], ["budget.flops: inf must be a finite"]),
    ("budget-nan", lambda t: COUNT + ["budget.flops=.nan"], ["budget.flops: nan must be a finite number"]),
    ("budget-tokens-absurd", lambda t: COUNT + ["budget.flops=null", "budget.tokens=1e308"],
     ["budget.tokens: 1e+308 exceeds 1e+30"]),
    ("budget-multiplier-negative", lambda t: COUNT + ["budget.flops=null", "budget.token_multiplier=-20"],
     ["budget.token_multiplier: -20.0 must be > 0"]),
    ("learning-rate-inf", lambda t: COUNT + ["optimizer.learning_rate=.inf"], ["optimizer.learning_rate: inf must be"]),
    ("weight-decay-nan", lambda t: COUNT + ["optimizer.weight_decay=.nan"], ["optimizer.weight_decay: nan must be"]),
    ("beta-one", lambda t: COUNT + ["optimizer.beta2=1"], ["optimizer.beta2: 1.0 must be in [0, 1)"]),
    ("eps-zero", lambda t: COUNT + ["optimizer.eps=0"], ["optimizer.eps: 0.0 must be > 0"]),
    ("grad-clip-negative", lambda t: COUNT + ["optimizer.grad_clip=-1"], ["optimizer.grad_clip: -1.0 must be >= 0"]),
    ("wsd-fractions-over-one", lambda t: COUNT + ["optimizer.schedule=wsd", "optimizer.warmup_fraction=0.6",
                                                   "optimizer.decay_fraction=0.5"],
     ["optimizer.decay_fraction: 0.5 plus optimizer.warmup_fraction 0.6 exceed the whole run"]),
    ("tdp-negative", lambda t: COUNT + ["hardware.tdp_watts=-5"], ["hardware.tdp_watts: -5.0 must be > 0"]),
    ("peak-zero", lambda t: COUNT + ["hardware.peak_flops_per_second=0"], ["hardware.peak_flops_per_second: 0.0 must"]),
    ("peak-inf", lambda t: COUNT + ["hardware.peak_flops_per_second=.inf"], ["hardware.peak_flops_per_second: inf"]),
    ("pue-below-one", lambda t: COUNT + ["hardware.pue=0.5"], ["hardware.pue: 0.5 must be >= 1"]),
    ("carbon-negative", lambda t: COUNT + ["hardware.grid_kg_co2e_per_kwh=-1"], ["hardware.grid_kg_co2e_per_kwh: -1.0"]),
    ("eval-fraction-one", lambda t: COUNT + ["data.eval_fraction=1"], ["data.eval_fraction: 1.0 must be in (0, 1)"]),
    ("integer-overflowing-literal", lambda t: COUNT + ["run.log_every=1e400"], ["run.log_every: expected an integer"]),
    ("seed-negative", lambda t: COUNT + ["run.seed=-1"], ["run.seed: -1 must be in [0, 4294967295]"]),
    ("seed-too-large", lambda t: COUNT + ["run.seed=4294967296"], ["run.seed: 4294967296 must be in"]),
    # names that would escape run.out_dir, and output directories that cannot be one
    ("experiment-escapes", lambda t: ["train", TINY, "run.experiment=../../elsewhere"],
     [f"run.experiment: '../../elsewhere' {NAME_RULE}"]),
    ("experiment-absolute", lambda t: ["train", TINY, f"run.experiment={t / 'abs'}"], ["run.experiment: '/"]),
    ("run-id-parent", lambda t: ["train", TINY, "run.run_id=.."], [f"run.run_id: '..' {NAME_RULE}"]),
    ("run-id-dot", lambda t: ["train", TINY, "run.run_id=."], [f"run.run_id: '.' {NAME_RULE}"]),
    ("experiment-nul", lambda t: ["train", TINY, 'run.experiment="a\\0b"'], ["run.experiment: contains a NUL byte"]),
    ("experiment-too-long", lambda t: ["train", TINY, "run.experiment=" + "x" * 200],
     ["run.experiment: 200-character name exceeds 128 characters"]),
    ("out-dir-is-a-file", lambda t: ["train", TINY, "run.out_dir=afile"],
     ["run.out_dir: 'afile' exists and is not a directory"]),
    ("out-dir-under-a-file", lambda t: ["train", TINY, "run.out_dir=afile/runs"], ["run.out_dir: 'afile' (a parent"]),
    ("out-dir-empty", lambda t: ["train", TINY, "run.out_dir=''"], ["run.out_dir: '' must be a non-empty path"]),
    ("cache-dir-is-a-file", lambda t: ["train", TINY, "data.cache_dir=afile"], ["data.cache_dir: 'afile' exists"]),
    ("train-override-malformed", lambda t: ["train", TINY, "model.d_model=[1,"], ["override model.d_model: '[1,'"]),
    ("every-problem-at-once", lambda t: ["train", TINY, "run.experiment=..", "run.run_id=a/b", "hardware.pue=0"],
     ["run.experiment: '..'", "run.run_id: 'a/b'", "hardware.pue: 0.0 must be >= 1"]),
    # grid specs
    ("grid-override-malformed", lambda t: ["grid", "plan", spec(t, overrides=["model.d_model=[1,"])],
     ["overrides[0] model.d_model: '[1,' is not a valid YAML value"]),
    ("grid-override-python-tag", lambda t: ["grid", "plan", spec(t, overrides=["model.d_model=!!python/name:os.system"])],
     ["overrides[0] model.d_model: '!!python/name:os.system' is not a valid YAML value"]),
    ("grid-override-not-key-value", lambda t: ["grid", "plan", spec(t, overrides=["model.d_model"])],
     ["overrides[0]: 'model.d_model' must look like section.field=value"]),
    ("grid-override-sets-name", lambda t: ["grid", "plan", spec(t, overrides={"run.experiment": "x"})],
     ["overrides.run.experiment: set by the grid"]),
    ("grid-spec-not-utf8", lambda t: ["grid", "plan", write(t / "grid.yaml", b"kind: sweep\xfe\n")],
     ["grid.yaml is not UTF-8 text"]),
    ("grid-spec-directory", lambda t: ["grid", "plan", "adir"], ["spec: 'adir' is a directory"]),
    ("grid-base-directory", lambda t: ["grid", "plan", spec(t, base="adir")], ["base: 'adir' is a directory"]),
    ("grid-preset-directory", lambda t: ["grid", "plan", spec(t, kind="overtrain", axes=None, token_multipliers=[20],
                                                               models=["adir"])],
     ["models[0].preset: 'adir' is a directory"]),
    ("grid-name-escapes", lambda t: ["grid", "plan", spec(t, name="../up")], [f"name: '../up' {NAME_RULE}"]),
    ("grid-name-dot", lambda t: ["grid", "run", spec(t, name=".")], [f"name: '.' {NAME_RULE}"]),
    ("grid-out-dir-is-a-file", lambda t: ["grid", "plan", spec(t), "--out-dir", "afile"],
     ["--out-dir: 'afile' exists and is not a directory"]),
    ("grid-run-out-dir-is-a-file", lambda t: ["grid", "run", spec(t), "--out-dir", "afile"],
     ["--out-dir: 'afile' exists and is not a directory"]),
    ("grid-out-dir-empty", lambda t: ["grid", "plan", spec(t), "--out-dir", ""], ["--out-dir: '' must be a non-empty"]),
    ("grid-spec-out-dir-is-a-file", lambda t: ["grid", "plan", spec(t, out_dir="afile")],
     ["out_dir: 'afile' exists and is not a directory"]),
    ("grid-unknown-key", lambda t: ["grid", "plan", spec(t, axis={"model.ffn": ["gelu"]})],
     ["axis: unknown key (did you mean 'axes'?)"]),
    ("grid-key-of-another-kind", lambda t: ["grid", "plan", spec(t, budgets=[1e12])], ["budgets: unknown key"]),
    ("grid-kind-typo", lambda t: ["grid", "plan", spec(t, kind="swep")],
     ["kind: 'swep' is not allowed (did you mean 'sweep'?)"]),
    ("grid-budget-inf", lambda t: ["grid", "plan", isoflop_spec(t, budgets=[math.inf, 1e12])],
     ["budgets[0]: inf must be a finite number"]),
    ("grid-budget-negative", lambda t: ["grid", "plan", isoflop_spec(t, budgets=[-1, 1e12])],
     ["budgets[0]: -1.0 must be > 0"]),
    ("grid-budget-repeated", lambda t: ["grid", "plan", isoflop_spec(t, budgets=[1e12, 1e12])],
     ["budgets: [1000000000000.0, 1000000000000.0] repeats a value"]),
    ("grid-budget-absurd", lambda t: ["grid", "plan", isoflop_spec(t, budgets=[1e45])],
     ["run C1e45-d32-l1: budget.flops: 1e+45 exceeds 1e+40", "run C1e45-d64-l2: budget.flops: 1e+45 exceeds"]),
    ("grid-multiplier-nan", lambda t: ["grid", "plan", spec(t, kind="overtrain", axes=None, models=["ladder-0"],
                                                              token_multipliers=[math.nan])],
     ["token_multipliers[0]: nan must be a finite number"]),
    ("grid-ladder-unknown-key", lambda t: ["grid", "plan", isoflop_spec(t, ladder={"d_modle": [32]})],
     ["ladder.d_modle: unknown key (did you mean 'd_model'?)",
      "ladder: set d_model (a list of widths), n_layers (a list of depths), or both"]),
    ("grid-ladder-bad-ratio", lambda t: ["grid", "plan", isoflop_spec(t, ladder={"d_model": [32], "ffn_ratio": "8/0"})],
     ["ladder.ffn_ratio: '8/0' is not a number or a fraction like '8/3'"]),
    ("grid-ladder-infinite-ratio", lambda t: ["grid", "plan", isoflop_spec(t, ladder={"n_layers": [2],
                                                                                       "aspect_ratio": math.inf})],
     ["ladder.aspect_ratio: inf must be a finite number"]),
    ("grid-ladder-zero-head-dim", lambda t: ["grid", "plan", isoflop_spec(t, ladder={"d_model": [32], "head_dim": 0})],
     ["ladder.head_dim: 0 must be > 0"]),
    ("grid-tokens-per-param-typo", lambda t: ["grid", "plan", isoflop_spec(t, tokens_per_param={"mn": 1})],
     ["tokens_per_param.mn: unknown key (did you mean 'min'?)"]),
    ("grid-model-entry-typo", lambda t: ["grid", "plan", spec(t, kind="overtrain", axes=None, token_multipliers=[20],
                                                               models=[{"preset": "ladder-0", "nme": "a"}])],
     ["models[0].nme: unknown key (did you mean 'name'?)"]),
    ("grid-model-name-escapes", lambda t: ["grid", "plan", spec(t, kind="overtrain", axes=None, token_multipliers=[20],
                                                                 models=[{"preset": "ladder-0", "name": "../x"}])],
     [f"models[0].name: '../x' {NAME_RULE}"]),
    ("grid-seed-negative", lambda t: ["grid", "plan", spec(t, seeds=[0, -1])], ["seeds[1]: -1 must be between 0 and"]),
    ("grid-min-steps-zero", lambda t: ["grid", "plan", spec(t, min_steps=0)], ["min_steps: 0 must be > 0"]),
    ("grid-params-typo", lambda t: ["grid", "plan", isoflop_spec(t, params="totl")],
     ["params: 'totl' is not allowed (did you mean 'total'?)"]),
    ("grid-tokens-per-second-inf", lambda t: ["grid", "plan", spec(t), "--tokens-per-second", "inf"],
     ["argument --tokens-per-second: must be a finite number > 0 (got 'inf')"]),
    ("grid-max-parallel-zero", lambda t: ["grid", "run", spec(t), "--max-parallel", "0"],
     ["argument --max-parallel: must be an integer > 0 (got '0')"]),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = tmp_path (so the default run.out_dir `runs` lies inside it), the data cache inside it too,
    a file and a directory for the cases that need one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write(tmp_path / "afile", "not a directory\n")
    (tmp_path / "adir").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_per_problem_exit_2_and_writes_nothing(workdir, capsys, argv, expected):
    argv = argv(workdir)
    before = snapshot(workdir)
    code, out, err = isoflop(capsys, *argv)
    lines = err.strip().splitlines()
    prefix = f"isoflop {argv[0]}: "
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and len(lines) == len(expected), lines
    for line, piece in zip(lines, expected):
        assert line.startswith(prefix) and piece in line, (line, piece)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("argv", [lambda t: COUNT, lambda t: ["grid", "plan", spec(t)],
                                  lambda t: ["grid", "plan", isoflop_spec(t)]], ids=["count", "sweep", "isoflop"])
def test_the_cases_start_from_valid_input(workdir, capsys, argv):
    """The control: each case above changes one thing of an input that is accepted (and still writes nothing)."""
    argv = argv(workdir)
    before = snapshot(workdir)
    code, out, err = isoflop(capsys, *argv)
    assert code == 0 and err == "" and out, (code, err)
    assert snapshot(workdir) == before
