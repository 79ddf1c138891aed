"""Cluster manifests from a grid spec: `isoflop grid export SPEC --gke` prints Kubernetes Indexed Jobs.

One Indexed Job per stage: stage 0 holds every run that starts at step 0, stage 1 the WSD branches, which
start from their stable runs' checkpoints and so need stage 0 complete (`kubectl wait`, see
docs/GRIDS-TRUSTWORTHY.md). Pod i of a stage runs `isoflop grid run SPEC --out-dir MOUNT --only RUN_i`,
RUN_i picked by the JOB_COMPLETION_INDEX Kubernetes sets, so the launcher's own resume, records and
checks apply on the cluster as they do here: a restarted pod resumes its run from its last checkpoint.
Run directories live on a PersistentVolumeClaim mounted at MOUNT in every pod. Each pod asks for the
spec's `resources:` (cpus_per_task, mem_gb, gpus_per_node as nvidia.com/gpu) and gets `resources.env`.
One pod per run: a multi-host run (resources.nodes > 1) needs a JobSet or a TPU slice (the doc's recipe).
"""

from __future__ import annotations

import re
import shlex

import yaml

from common.validation import ConfigError
from launch.plan import GridPlan, PlannedRun

_DNS_UNSAFE = re.compile(r"[^a-z0-9-]+")
MAX_NAME = 63  # a Kubernetes object name is a DNS-1123 label
RESTARTS_PER_RUN = 3  # pod failures tolerated per run before the Job gives up (each resumes from a checkpoint)


def dns_label(text: str) -> str:
    """`text` as a DNS-1123 label: lowercase alphanumerics and '-', at most 63 characters, no '-' at the ends."""
    return _DNS_UNSAFE.sub("-", text.lower()).strip("-")[:MAX_NAME].rstrip("-") or "isoflop"


def stages(plan: GridPlan) -> list[list[PlannedRun]]:
    """[runs that wait for none, runs that wait for stage 0's: WSD branches, transferred learning rates]
    (the second only when the grid has such runs)."""
    first = [run for run in plan.runs if not run.waits_for]
    later = [run for run in plan.runs if run.waits_for]
    return [first, later] if later else [first]


def _resources(plan: GridPlan) -> dict:
    resources = plan.spec.resources
    requests = {}
    if resources.cpus_per_task is not None:
        requests["cpu"] = str(resources.cpus_per_task)
    if resources.mem_gb is not None:
        requests["memory"] = f"{resources.mem_gb}Gi"
    limits = dict(requests)
    if resources.gpus_per_node:
        limits["nvidia.com/gpu"] = str(resources.gpus_per_node)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def _command(plan: GridPlan, runs: list[PlannedRun], spec_path: str, mount: str) -> str:
    """The pod's shell line: pick this index's run id and run it through the grid launcher."""
    run_ids = " ".join(shlex.quote(run.run_id) for run in runs)
    return (f"RUNS=({run_ids}); exec isoflop grid run {shlex.quote(spec_path)} --out-dir {shlex.quote(mount)} "
            '--only "${RUNS[$JOB_COMPLETION_INDEX]}"')


def gke_jobs(plan: GridPlan, *, image: str, spec_path: str, claim: str, mount: str = "/runs",
             namespace: str = "default", max_parallel: int | None = None,
             service_account: str | None = None, accelerator: str | None = None) -> list[dict]:
    """The Indexed Jobs of the grid (see the module docstring), as plain data ready for yaml.safe_dump."""
    resources = plan.spec.resources
    if resources.nodes != 1 or resources.tasks_per_node != 1:
        raise ConfigError([f"resources.nodes: {resources.nodes} x tasks_per_node {resources.tasks_per_node}: the GKE "
                           "export runs one process per run; multi-host runs need a JobSet or a TPU slice "
                           "(docs/GRIDS-TRUSTWORTHY.md)"])
    env = [{"name": key, "value": value} for key, value in sorted((resources.env or {}).items())]
    jobs = []
    for index, runs in enumerate(stages(plan)):
        name = dns_label(f"isoflop-{plan.spec.name}")[: MAX_NAME - 3].rstrip("-") + f"-s{index}"
        container = {"name": "train", "image": image, "command": ["bash", "-c", _command(plan, runs, spec_path, mount)],
                     "env": env, "resources": _resources(plan), "volumeMounts": [{"name": "runs", "mountPath": mount}]}
        pod = {"restartPolicy": "OnFailure", "containers": [container],
               "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": claim}}]}
        if service_account:
            pod["serviceAccountName"] = service_account
        if accelerator:
            pod["nodeSelector"] = {"cloud.google.com/gke-accelerator": accelerator}
        jobs.append({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "isoflop", "isoflop/grid": dns_label(plan.spec.name),
                                    "isoflop/stage": str(index)}},
            "spec": {"completionMode": "Indexed", "completions": len(runs),
                     "parallelism": min(len(runs), max_parallel or len(runs)),
                     "backoffLimit": RESTARTS_PER_RUN * len(runs),
                     "template": {"metadata": {"labels": {"isoflop/grid": dns_label(plan.spec.name)}}, "spec": pod}},
        })
    return jobs


def gke_manifest(plan: GridPlan, stage: int | None = None, **options) -> str:
    """The Jobs (or only stage `stage`'s) as one multi-document YAML, each introduced by what it holds."""
    documents = []
    for index, (job, runs) in enumerate(zip(gke_jobs(plan, **options), stages(plan))):
        if stage is not None and index != stage:
            continue
        what = ("runs that wait for stage 0 (WSD branches, transferred learning rates): apply after stage 0 "
                "completed" if runs[0].waits_for else "runs that start at step 0")
        documents.append(f"# stage {job['metadata']['labels']['isoflop/stage']}: {len(runs)} {what}\n"
                         + yaml.safe_dump(job, sort_keys=False))
    if not documents:
        raise ConfigError([f"--stage: {stage}, but this grid has {len(stages(plan))} stage(s) "
                           "(1 when it has no branches)"])
    return "---\n".join(documents)


__all__ = ["dns_label", "gke_jobs", "gke_manifest", "stages"]
