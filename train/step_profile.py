"""Where a train step's time goes, by part of the model (issue 5; findings in docs/PERFORMANCE.md).

Traces a few steps with the JAX profiler, which leaves a TensorBoard-viewable trace under
OUT/plugins/profile/ (`tensorboard --logdir OUT`, with the profile plugin installed), and attributes each
XLA op of the compiled step to a part of the model by the Python call stack XLA keeps in the op's
metadata: matmuls (output logits, attention projections, attention scores/values, feed-forward) vs the
attention softmax and mask vs norms vs activations vs the loss vs the optimizer update vs the embedding
gather/scatter. An op's time is its minimum over the traced steps, so a noisy neighbour on a shared host
inflates it less; the wall time per step minus the summed op time is what no op accounts for (thread
hand-offs, dispatch, host). Ops that run concurrently are summed, so on an idle host the op total can
exceed the wall time.

The summary explains the MFU gap: MFU = (share of the step spent in matmuls) x (the rate those matmuls
reach, model FLOPs / matmul seconds, as a share of the peak), the rest of the step split into attention
softmax/mask/layout, element-wise work and the optimizer update.

    python -m train.step_profile configs/bench/shape-a.yaml [key=value ...] [--out /tmp/profile-a]

Run that way it first applies the host allocator setting of train/runtime.py, as training should.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import statistics
import tempfile
import time

from modeling import accounting
from train import runtime
from train.config import Config
from train.hardware import compute_dtype_of, device_peak

# jax and the modules that import it load inside the functions, so that `main` can set the host
# allocator (train/runtime.py) before JAX starts its backend.

_OPTIMIZER = ("float32_state", "scale_by_adam", "clip_by_global_norm", "apply_updates", "add_decayed_weights",
              "masked", "scale_by_schedule", "scale_by_learning_rate", "tree_norm", "global_norm")
# A custom_vjp's backward ops carry the stack of its call site (blocked_causal_attention), not of *_bwd.
_ATTENTION_CORE = ("_forward", "_attention_fwd", "_attention_bwd", "blocked_causal_attention",
                   "_dot_product_attention_core", "dot_product_attention", "linear_attention_chunked")
_NORMS = ("LayerNorm.__call__", "RMSNorm.__call__", "_compute_stats", "_normalize")
_FFN = ("PlainFFN.__call__", "GatedFFN.__call__")
_DENSE = ("Linear.__call__", "Dense.__call__", "f32_result_matmul", "_f32_result_matmul_fwd",
          "_f32_result_matmul_bwd")


def _section(text: str, name: str) -> list[str]:
    match = re.search(rf"^{name}\n(.*?)\n\n", text, re.S | re.M)
    return match.group(1).splitlines() if match else []


def _numbered(lines: list[str]) -> dict[int, str]:
    return {int(line.split(" ", 1)[0]): line.split(" ", 1)[1] for line in lines}


def call_stacks(hlo_text: str) -> dict[int, list[str]]:
    """stack_frame_id -> function names, innermost first, from the tables XLA prints before the HLO."""
    functions = {k: v.strip('"') for k, v in _numbered(_section(hlo_text, "FunctionNames")).items()}
    locations = {k: int(re.search(r"function_name_id=(\d+)", v).group(1))
                 for k, v in _numbered(_section(hlo_text, "FileLocations")).items()}
    frames = {}
    for k, v in _numbered(_section(hlo_text, "StackFrames")).items():
        location, parent = (int(n) for n in re.findall(r"=(\d+)", v)[:2])
        frames[k] = (location, parent - 1)  # parents are printed 1-based; a frame naming itself is a root

    def names(frame: int) -> list[str]:
        out, seen = [], set()
        while frame in frames and frame not in seen:
            seen.add(frame)
            location, parent = frames[frame]
            out.append(functions[locations[location]])
            frame = parent
        return out

    return {frame: names(frame) for frame in frames}


def entry_ops(hlo_text: str) -> dict[str, dict]:
    """Instruction name -> {functions, backward, matmul} for every op of the entry computation."""
    stacks = call_stacks(hlo_text)
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    ops = {}
    for line in entry.splitlines()[1:]:
        match = re.match(r"\s+(?:ROOT )?%(\S+) = \S+ ([\w-]+)\(", line)
        if not match:
            continue
        name, opcode = match.groups()
        frame = re.search(r"stack_frame_id=(\d+)", line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else ""
        ops[name] = {
            "name": name,
            "functions": stacks.get(int(frame.group(1)), []) if frame else [],
            "backward": "transpose(" in op_name,
            # XLA:CPU wraps dots in library fusions (ynn_fusion); the fusion's root names the operation.
            "matmul": opcode in ("dot", "convolution") or op_name.rsplit("/", 1)[-1] == "dot_general",
        }
    return ops


def _attention_modules() -> tuple[str, ...]:
    """`__call__` of every registered attention module (JAX hides its own frames)."""
    from modeling.attention import ATTENTION

    return tuple(f"{cls.__name__}.__call__" for cls in set(ATTENTION.values()))


def category(op: dict) -> str:
    """The part of the model an op belongs to (see the module docstring)."""
    functions = op["functions"]
    attention_modules = _attention_modules()
    has = lambda names: any(f in names for f in functions)  # noqa: E731
    if op["matmul"]:
        if "Transformer.logits" in functions:
            return "matmul: output logits"
        if has(_ATTENTION_CORE + attention_modules) and not has(_DENSE):
            return "matmul: attention scores/values"
        if has(_FFN):
            return "matmul: feed-forward"
        if any("QKVProjections" in f for f in functions):
            return "matmul: attention projections"
        return "matmul: other"
    for function in functions:  # innermost first: the closest recognisable caller decides
        if function in _OPTIMIZER or function.startswith(("scale_by_adam", "clip_by_global_norm", "masked")):
            return "optimizer update"
        if function in _NORMS:
            return "norms"
        if function in ("cross_entropy", "softmax_cross_entropy_with_integer_labels"):
            return "loss (log-softmax)"
        if function in _ATTENTION_CORE or (function in attention_modules and not has(_DENSE)):
            return "attention softmax/mask/layout"
        if function == "Embed.__call__":
            return "embedding gather/scatter"
        if function in _FFN:
            return "feed-forward activation"
        if function in _DENSE:
            return "bias add / dtype casts"
        if function == "Block.__call__":
            return "residual adds"
    # Ops XLA's own passes made carry no stack; their names say what they are.
    if "reduce-window" in op["name"]:
        return "reduce-window sum trees (bf16 sums)"
    if "convert" in op["name"]:
        return "dtype converts"
    return "other (copies, transposes, layouts)"


def op_seconds_from_trace(trace_dir: str | pathlib.Path, op_names, steps: int) -> dict[str, float]:
    """Per-op seconds per step: the minimum duration over the traced steps of each named op."""
    import jax

    files = sorted(pathlib.Path(trace_dir).glob("plugins/profile/*/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    profile = jax.profiler.ProfileData.from_file(str(files[-1]))
    durations = collections.defaultdict(list)
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in op_names:
                    durations[event.name].append(event.duration_ns * 1e-9)
    # An op that runs k times a step (none do in an unrolled step) is counted k times at its minimum.
    return {name: min(times) * max(1, round(len(times) / steps)) for name, times in durations.items()}


def profile_train(config: Config, out_dir: str | pathlib.Path, steps: int = 5) -> dict:
    """Trace `steps` train steps into out_dir and split their time by part of the model."""
    import jax

    from train import data as data_lib
    from train.loop import build_training

    dataset = data_lib.prepare(config)
    setup = build_training(config, steps + 3)  # the trainer's own step and state
    params, opt_state, step_fn, data_sh = setup.params, setup.opt_state, setup.train_step, setup.data_sharding
    iterator = dataset.train_iterator(config.run.seed)
    batches = [jax.device_put(next(iterator), data_sh) for _ in range(steps + 2)]
    compiled = step_fn.lower(params, opt_state, batches[0]).compile()
    for batch in batches[:2]:  # warm-up: first-call allocations stay out of the trace
        params, opt_state, metrics = compiled(params, opt_state, batch)
        jax.block_until_ready(metrics)
    wall = []
    with jax.profiler.trace(str(out_dir)):
        for batch in batches[2:]:
            start = time.perf_counter()
            params, opt_state, metrics = compiled(params, opt_state, batch)
            jax.block_until_ready(metrics)
            wall.append(time.perf_counter() - start)
    ops = entry_ops(compiled.as_text())
    seconds = op_seconds_from_trace(out_dir, ops, steps)
    forward, backward, counts = collections.Counter(), collections.Counter(), collections.Counter()
    for name, value in seconds.items():
        part = category(ops[name])
        (backward if ops[name]["backward"] else forward)[part] += value
        counts[part] += 1
    total = sum(seconds.values())
    rows = sorted(({"part": part, "forward_seconds": forward[part], "backward_seconds": backward[part],
                    "ops": counts[part]} for part in counts),
                  key=lambda row: -(row["forward_seconds"] + row["backward_seconds"]))
    devices = setup.mesh.devices.flatten().tolist()
    peak = device_peak(devices[0], compute_dtype_of(config.model.precision), config.hardware)
    tokens = config.data.batch_size * config.data.seq_len
    return {"wall_seconds_per_step_median": statistics.median(wall), "op_seconds_per_step": total,
            "rows": rows, "trace_dir": str(out_dir),
            "model_flops_per_step": accounting.mfu_flops_per_token(config.model, config.data.seq_len) * tokens,
            "peak_flops_per_second": None if peak.flops_per_second is None else peak.flops_per_second * len(devices),
            "host_paths": setup.host_paths}


def group(part: str) -> str:
    """The four kinds of time the MFU gap is made of."""
    if part.startswith("matmul"):
        return "matmuls"
    if part.startswith("attention"):
        return "attention softmax/mask/layout"
    if part == "optimizer update":
        return "optimizer update"
    return "element-wise and other"


def mfu_gap(result: dict) -> list[str]:
    """MFU = matmul share of the step x matmul rate / peak, and where the rest of the step goes."""
    wall = result["wall_seconds_per_step_median"]
    groups = collections.Counter()
    for row in result["rows"]:
        groups[group(row["part"])] += row["forward_seconds"] + row["backward_seconds"]
    groups["not in any op (dispatch, waits, other processes)"] = max(0.0, wall - sum(groups.values()))
    lines = [f"{name:36} {1e3 * value:8.1f} ms {100 * value / wall:5.1f}% of the wall step"
             for name, value in groups.most_common()]
    matmul, peak, flops = groups["matmuls"], result["peak_flops_per_second"], result["model_flops_per_step"]
    if matmul > 0 and peak:
        rate = flops / matmul
        lines.append(f"MFU {100 * flops / wall / peak:.1f}% = matmuls {100 * matmul / wall:.1f}% of the step x their"
                     f" rate {rate:.3g} FLOP/s = {100 * rate / peak:.1f}% of the peak {peak:.3g}"
                     " (model FLOPs / matmul op time)")
    return lines


def format_profile(result: dict) -> str:
    total = result["op_seconds_per_step"]
    lines = [f"{'part of the step':36} {'fwd ms':>8} {'bwd ms':>8} {'share':>6} {'ops':>5}"]
    for row in result["rows"]:
        both = row["forward_seconds"] + row["backward_seconds"]
        lines.append(f"{row['part']:36} {1e3 * row['forward_seconds']:8.1f} {1e3 * row['backward_seconds']:8.1f} "
                     f"{100 * both / total:5.1f}% {row['ops']:5d}")
    wall = result["wall_seconds_per_step_median"]
    lines.append(f"ops total {1e3 * total:.1f} ms/step (each op at its fastest of the traced steps); wall "
                 f"{1e3 * wall:.1f} ms/step (median); not in any op: {1e3 * max(0.0, wall - total):.1f} ms")
    from train.cpu_paths import format_paths

    lines += ["", *mfu_gap(result), format_paths(result["host_paths"])]
    lines.append(f"trace for TensorBoard: {result['trace_dir']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from train import config as config_lib

    runtime.configure_host_runtime()
    parser = argparse.ArgumentParser(prog="python -m train.step_profile", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--out", help="directory for the profiler trace (default: a new temporary directory)")
    parser.add_argument("--steps", type=int, default=5, help="traced steps (after 2 warm-up steps)")
    args = parser.parse_args(argv)
    config = config_lib.load(args.config, args.overrides)
    out = args.out or tempfile.mkdtemp(prefix="isoflop-profile-")
    print(format_profile(profile_train(config, out, args.steps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
