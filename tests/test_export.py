"""Cluster recipes without a cluster: the GKE manifests parse and carry the command, resources and
environment of the spec; the spec's resources become submitit's SLURM parameters and sbatch lines."""

import pathlib
import subprocess

import pytest
import yaml

from launch import export
from launch import plan as plan_lib
from launch import runner
from launch.cli import main

RESOURCES = {"gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 64, "timeout_min": 120, "partition": "gpu",
             "account": "lab", "setup": ["module load cuda"], "env": {"XLA_PYTHON_CLIENT_MEM_FRACTION": 0.9,
                                                                      "HF_HOME": "/scratch/hf cache"}}
OVERTRAIN = {"kind": "overtrain", "base": "tiny.yaml", "token_multipliers": [10, 40],
             "overrides": {"data.seq_len": 128, "model.max_seq_len": 128, "optimizer.schedule": "wsd",
                           "optimizer.warmup_rule": "params"},
             "ladder": {"d_model": [24, 32], "aspect_ratio": 16, "head_dim": 8}}


def write_spec(tmp_path, **fields) -> pathlib.Path:
    path = tmp_path / "Ladder_Spec.yaml"
    path.write_text(yaml.safe_dump({"name": "Ladder_Spec", **OVERTRAIN, "resources": RESOURCES, **fields}))
    return path


def manifest(tmp_path, capsys, *extra, **fields) -> list[dict]:
    spec = write_spec(tmp_path, **fields)
    assert main(["grid", "export", str(spec), "--gke", "--image", "gcr.io/p/isoflop:1", "--claim", "isoflop-runs",
                 "--accelerator", "nvidia-l4", *extra]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_gke_manifest_is_one_indexed_job_per_stage_with_the_spec_resources_and_env(tmp_path, capsys):
    jobs = manifest(tmp_path, capsys, "--max-parallel", "3")
    grid = plan_lib.load(write_spec(tmp_path), "/runs")
    assert [job["metadata"]["name"] for job in jobs] == ["isoflop-ladder-spec-s0", "isoflop-ladder-spec-s1"]
    for job, runs in zip(jobs, export.stages(grid)):
        assert (job["apiVersion"], job["kind"], job["spec"]["completionMode"]) == ("batch/v1", "Job", "Indexed")
        assert job["spec"]["completions"] == len(runs) and job["spec"]["parallelism"] == min(3, len(runs))
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "gcr.io/p/isoflop:1" and container["command"][:2] == ["bash", "-c"]
        assert container["resources"] == {"requests": {"cpu": "8", "memory": "64Gi"},
                                          "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}}
        assert {item["name"]: item["value"] for item in container["env"]} == {
            "HF_HOME": "/scratch/hf cache", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9"}
        assert container["volumeMounts"] == [{"name": "runs", "mountPath": "/runs"}]
        assert pod["volumes"] == [{"name": "runs", "persistentVolumeClaim": {"claimName": "isoflop-runs"}}]
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        # Pod i runs the i-th run id through the launcher: bash itself picks it, as in the pod.
        for index, run in enumerate(runs):
            line = container["command"][2].replace("exec isoflop", "echo isoflop")
            shown = subprocess.run(["bash", "-c", line], env={"JOB_COMPLETION_INDEX": str(index)},
                                   capture_output=True, text=True, check=True).stdout.split()
            assert shown == ["isoflop", "grid", "run", str(write_spec(tmp_path)), "--out-dir", "/runs", "--only",
                             run.run_id]
    assert [run.role for run in export.stages(grid)[0]] == ["stable", "stable"]
    assert all(run.role == "branch" for run in export.stages(grid)[1])


def test_a_grid_without_branches_is_one_job_and_multi_host_runs_are_refused(tmp_path, capsys):
    jobs = manifest(tmp_path, capsys, branches=False)
    assert len(jobs) == 1 and jobs[0]["spec"]["completions"] == 4
    spec = write_spec(tmp_path, resources={**RESOURCES, "nodes": 2})
    assert main(["grid", "export", str(spec), "--gke", "--image", "i", "--claim", "c"]) == 2
    assert "resources.nodes: 2 x tasks_per_node 1: the GKE export runs one process per run" in capsys.readouterr().err


def test_export_writes_a_file_or_one_stage_and_refuses_out_dir(tmp_path, capsys):
    spec = write_spec(tmp_path)
    target = tmp_path / "grid.yaml"
    assert main(["grid", "export", str(spec), "--gke", "--image", "i", "--claim", "c", "-o", str(target)]) == 0
    assert len(list(yaml.safe_load_all(target.read_text()))) == 2
    assert main(["grid", "export", str(spec), "--gke", "--image", "i", "--claim", "c", "--stage", "1"]) == 0
    (job,) = yaml.safe_load_all(capsys.readouterr().out)
    assert job["metadata"]["name"].endswith("-s1") and job["spec"]["completions"] == 4
    no_branches = write_spec(tmp_path, branches=False)
    assert main(["grid", "export", str(no_branches), "--gke", "--image", "i", "--claim", "c", "--stage", "1"]) == 2
    assert "--stage: 1, but this grid has 1 stage(s)" in capsys.readouterr().err
    assert main(["grid", "export", str(spec), "--gke", "--image", "i", "--claim", "c", "--out-dir", "x"]) == 2
    assert "--out-dir: the pods write under --mount" in capsys.readouterr().err


@pytest.mark.parametrize("text, label", [("Ladder_Spec", "ladder-spec"), ("-a..b-", "a-b"), ("x" * 80, "x" * 63)])
def test_dns_labels(text, label):
    assert export.dns_label(text) == label


def test_spec_resources_become_submitit_parameters_and_sbatch_lines(tmp_path):
    import submitit
    from submitit.slurm import slurm

    grid = plan_lib.load(write_spec(tmp_path))
    parameters = runner.submitit_parameters(grid.spec.resources, {"slurm_partition": "debug"})  # the CLI wins
    assert parameters == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 64,
                          "timeout_min": 120, "slurm_partition": "debug", "slurm_account": "lab",
                          "slurm_setup": ["module load cuda", "export HF_HOME='/scratch/hf cache'",
                                          "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"]}
    submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="local").update_parameters(**parameters)  # all known
    # What sbatch would be given: submitit's own translation of the generic names, then its script.
    names = slurm.SlurmExecutor._equivalence_dict()
    converted = {names.get(key, key.removeprefix("slurm_")): value for key, value in parameters.items()}
    converted["mem"] = f"{converted['mem']}GB"
    script = slurm._make_sbatch_string(command="python -m train", folder=tmp_path / "jobs", **converted)
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB",
                 "#SBATCH --time=120", "#SBATCH --partition=debug", "#SBATCH --account=lab", "module load cuda",
                 "export HF_HOME='/scratch/hf cache'"):
        assert line in script, line


def test_bad_resources_are_one_line_each(tmp_path):
    from common.validation import ConfigError

    with pytest.raises(ConfigError) as err:
        plan_lib.load(write_spec(tmp_path, resources={"nodes": 0, "gpus_per_node": -1, "env": {"1X": "a"},
                                                      "cpus": 4}))
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith("resources.cpus: unknown")
    with pytest.raises(ConfigError) as err:
        plan_lib.load(write_spec(tmp_path, resources={"nodes": 0, "gpus_per_node": -1, "env": {"1X": "a"}}))
    assert err.value.problems == ["resources.nodes: 0 must be > 0", "resources.gpus_per_node: -1 must be >= 0",
                                  "resources.env: '1X' is not an environment variable name"]


def test_a_job_runs_in_the_spec_environment_except_in_the_launchers_own_process(tmp_path, monkeypatch):
    import os

    for executor, expected in (("local", "1"), ("debug", None)):
        monkeypatch.setattr(os, "environ", {})  # restored after the test
        result = runner.TrainJob()(str(tmp_path / "missing.yaml"), str(tmp_path / "run"), str(tmp_path / "r.json"),
                                   executor, {"ISOFLOP_EXAMPLE": "1"})
        assert result["status"] == "failed" and "missing.yaml" in result["error"]
        assert os.environ.get("ISOFLOP_EXAMPLE") == expected
