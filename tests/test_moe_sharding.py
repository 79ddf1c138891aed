"""Expert parallelism on 8 fake CPU devices: parameters placed by their logical axes (modeling/sharding.py)
on a data×fsdp×expert×tensor mesh give the single-device loss and gradients, and the experts really are
split over the expert axis.

XLA fixes the device count when jax first initialises, so the sharded half runs in a subprocess with
`--xla_force_host_platform_device_count=8` (as tests/test_train.py does for its 8-device run)."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, re, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from modeling.config import ModelConfig
from modeling.sharding import BATCH_AXES, MESH_AXES, param_shardings
from modeling.transformer import Transformer

dispatch, mesh_shape = sys.argv[1], dict(zip(MESH_AXES, map(int, sys.argv[2].split("x"))))
cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=32, ffn="moe",
                  moe_experts=4, moe_top_k=2, moe_shared_experts=1, moe_dispatch=dispatch, bias="all",
                  tie_embeddings=False)
graphdef, state = nnx.split(Transformer(cfg, nnx.Rngs(0)))
tokens = jax.random.randint(jax.random.key(1), (8, 17), 0, cfg.vocab_size)
batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

def loss(state, batch):
    logits, aux = nnx.merge(graphdef, state).forward(batch["inputs"])
    nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1))
    return nll + aux["aux_loss"]

step = jax.value_and_grad(loss)
single_loss, single_grads = jax.jit(step)(state, batch)

mesh = Mesh(np.array(jax.devices()).reshape(tuple(mesh_shape.values())), MESH_AXES,
            axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
shardings = param_shardings(state, mesh)
placed = jax.device_put(state, shardings)
batch_sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
placed_batch = jax.device_put(batch, batch_sharding)
sharded_step = jax.jit(step, in_shardings=(shardings, batch_sharding))
sharded_loss, sharded_grads = sharded_step(placed, placed_batch)
hlo = sharded_step.lower(placed, placed_batch).compile().as_text()
gathered = re.findall(r"= (\S+) all-gather\(", hlo)

gate = placed["layers"][0]["ffn"]["experts"]["gate"]["kernel"][...]
flat_single, flat_sharded = jax.tree.leaves(single_grads), jax.tree.leaves(sharded_grads)
print(json.dumps({
    "loss": [float(single_loss), float(sharded_loss)],
    "grad_max_abs_diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(flat_single, flat_sharded)),
    "grad_max_abs": max(float(jnp.max(jnp.abs(a))) for a in flat_single),
    "gate_spec": [str(axis) for axis in gate.sharding.spec],
    "gate_shard_shape": list(gate.addressable_shards[0].data.shape),
    "gate_shape": list(gate.shape),
    "devices": len(jax.devices()),
    "all_to_all": hlo.count(" all-to-all("),
    "gathered_shapes": sorted(set(gathered)),
}))
"""


def _run(dispatch: str, mesh: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, dispatch, mesh], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("dispatch, mesh", [("capacity", "2x1x2x2"), ("dropless", "1x2x4x1")])
def test_expert_parallel_equals_one_device_and_splits_the_experts(dispatch, mesh):
    result = _run(dispatch, mesh)
    assert result["devices"] == 8
    # The same fp32 arithmetic with sums split across devices and added in another order. The loss is a
    # mean of B·T = 128 terms plus the aux losses: |error| <= (n - 1)·u·|loss| = 127·2^-24 ≈ 7.6e-6
    # relative, so rtol 2e-5. A gradient element sums at most B·T·k = 256 products: atol 256·2^-24 of the
    # largest gradient, ~1.5e-5 relative, bounded here by 1e-4 of it; a dropped shard or a wrong
    # all-reduce moves whole terms (≥ 1% of it).
    single, sharded = result["loss"]
    assert sharded == pytest.approx(single, rel=2e-5)
    assert result["grad_max_abs_diff"] <= 1e-4 * result["grad_max_abs"]
    experts_axis = int(mesh.split("x")[2])
    assert result["gate_spec"][0] == "expert"
    assert result["gate_shard_shape"][0] == result["gate_shape"][0] // experts_axis
    # the experts stay where they live: no expert kernel [E, ...] is ever gathered whole
    experts, d, d_ff = result["gate_shape"]
    kernels = (f"f32[{experts},{d},{d_ff}]", f"f32[{experts},{d_ff},{d}]")  # gate/up and down, whole
    assert not [shape for shape in result["gathered_shapes"] if shape.startswith(kernels)]
    if dispatch == "capacity":  # GSPMD turns the slot gather into all-to-alls: tokens travel to their experts
        assert result["all_to_all"] > 0


@pytest.mark.slow
def test_isoflop_train_on_an_expert_mesh_matches_one_device(tmp_path):
    """The trainer's own mesh (run.mesh_expert) and placement: the first logged losses equal one device's."""
    import yaml

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"f{i}.py").write_text(f"def add{i}(a, b):\n    return a + b\n\nclass Point{i}:\n    x = {i}\n" * 12)
    tree = {
        "model": {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_seq_len": 32,
                  "ffn": "moe", "moe_experts": 4, "moe_top_k": 2},
        "data": {"source": "text", "path": str(corpus), "seq_len": 32, "batch_size": 8, "eval_tokens": 512,
                 "eval_fraction": 0.1, "cache_dir": str(tmp_path / "cache")},
        "optimizer": {"learning_rate": 1e-2},
        "budget": {"tokens": 256 * 20},
        "run": {"log_every": 1, "eval_every": 10, "checkpoint_every": 10},
        "hardware": {"peak_flops_per_second": 1e11},
    }
    config = tmp_path / "moe.yaml"
    config.write_text(yaml.safe_dump(tree))
    losses = {}
    for name, devices, mesh in (("single", 1, []), ("sharded", 8, ["run.mesh_data=2", "run.mesh_expert=2",
                                                                      "run.mesh_tensor=2"])):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
        out = tmp_path / name
        done = subprocess.run([sys.executable, "-m", "launch.cli", "train", str(config), *mesh, "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [row["train_loss"] for row in rows if "train_loss" in row]
        assert json.loads((out / "summary.json").read_text())["hardware"]["count"] == devices
    # as tests/test_train.py: step 1's loss (initial weights) is a mean of B·T = 256 fp32 terms summed in
    # another order, (n - 1)·u = 1.5e-5 relative, so rtol 2e-5; later steps drift by round-off, rtol 1e-3.
    assert losses["sharded"][0] == pytest.approx(losses["single"][0], rel=2e-5)
    assert losses["sharded"] == pytest.approx(losses["single"], rel=1e-3)
