"""Sub-commands `train`, `count`, `generate`, `bench train` and `bench infer` of the `isoflop` console script."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from common.files import LockedError, WriteError
from common.validation import finite_float, non_negative_int, one_line_parser_errors, output_directory, positive_int
from train import config as config_lib


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (may `extends` another)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. model.d_model=512")


def register(commands) -> None:
    train = commands.add_parser("train", help="train a config under its FLOP budget (resumes an existing run dir)")
    _add_config_args(train)
    train.add_argument("--out", help="run directory (default: run.out_dir/run.experiment/run.run_id)")
    train.epilog = ("exit status: 0 trained (or already complete); 2 bad input, nothing written; 1 the run "
                    "stopped (signal, non-finite loss, failed write: rerun to resume) or its directory is "
                    "in use by another training")
    train.set_defaults(func=_train)

    count = commands.add_parser("count", help="parameters, FLOPs per token and memory of a config (no weights)")
    _add_config_args(count)
    count.add_argument("--json", action="store_true", help="print JSON instead of a table")
    count.add_argument("--no-compiled", action="store_true", help="skip the XLA compiled-step count")
    count.set_defaults(func=_count)

    generate = commands.add_parser("generate", help="continue a prompt with a run's latest checkpoint (streams text)")
    generate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with a checkpoint")
    generate.add_argument("--prompt", required=True, help="text to continue (may be empty)")
    generate.add_argument("--max-tokens", type=positive_int, default=200,
                          help="tokens to generate at most (default 200)")
    generate.add_argument("--temperature", type=finite_float, default=0.0, help="0 = greedy (default); > 0 samples")
    generate.add_argument("--top-k", type=positive_int, default=None, help="sample among the k likeliest tokens")
    generate.add_argument("--top-p", type=finite_float, default=1.0, help="nucleus: the likeliest tokens up to this "
                          "probability, in (0, 1] (default 1: all)")
    generate.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
    generate.set_defaults(func=_generate)
    one_line_parser_errors(generate, "isoflop generate")

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    bench_train = bench_kinds.add_parser("train", help="compile time, step time, tokens/s, MFU, data wait")
    _add_config_args(bench_train)
    bench_train.add_argument("--steps", type=int, default=10, help="timed steps after compilation")
    bench_train.add_argument("--json", action="store_true")
    bench_train.set_defaults(func=_bench_train)
    bench_jit = bench_kinds.add_parser("jit", help="per-step time of nnx.jit vs jax.jit over split state")
    _add_config_args(bench_jit)
    bench_jit.add_argument("--repeats", type=int, default=50)
    bench_jit.set_defaults(func=_bench_jit)
    bench_infer = bench_kinds.add_parser("infer", help="prefill/decode latency, throughput, KV cache, memory, "
                                         "energy and the memory-bandwidth bound, per batch size")
    bench_infer.add_argument("target", metavar="CONFIG|RUN_DIR", help="a YAML config (fresh weights) or a run "
                             "directory (its latest checkpoint; the result goes into its summary under `inference`)")
    bench_infer.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides (CONFIG only)")
    bench_infer.add_argument("--batch", default="1,4,16,64", help="batch sizes, comma-separated (default 1,4,16,64)")
    bench_infer.add_argument("--prompt-len", type=positive_int, default=128, help="prompt tokens (default 128)")
    bench_infer.add_argument("--gen-len", type=positive_int, default=64, help="generated tokens, >= 2 (default 64)")
    bench_infer.add_argument("--repeats", type=positive_int, default=3,
                             help="timed requests per batch size (default 3)")
    bench_infer.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench_infer.set_defaults(func=_bench_infer)
    one_line_parser_errors(bench_infer, "isoflop bench infer")


def _load(args) -> config_lib.Config:
    return config_lib.load(args.config, args.overrides)


def _train(args) -> int:
    config = _load(args)
    if args.out is not None:
        problems = output_directory("--out", args.out)
        if problems:
            raise config_lib.ConfigError(problems)
    from train import stop

    with stop.catching():  # a signal while JAX loads is held for the trainer, which stops with one line
        from train import loop, multihost, run_dir  # jax is imported only once the config is known to be valid

        multihost.initialize_from_env()  # a no-op unless launched as one process of several
        path = pathlib.Path(args.out) if args.out is not None else run_dir.default_path(config)
        try:
            summary = loop.train(config, path)
        except (WriteError, LockedError, stop.Interrupted) as err:  # one line each: the run can be rerun
            print(f"isoflop train: {err}", file=sys.stderr)
            return 1
    if summary.status != "completed":
        print(f"isoflop train: {summary.error}", file=sys.stderr)
        return 1
    print(f"{summary.status}: {path}  final eval loss {summary.final_eval_loss:.4f}  "
          f"{summary.tokens:,} tokens in {summary.wall_seconds:.0f} s")
    return 0


def _count(args) -> int:
    config = _load(args)
    from train import count

    report = count.count_report(config, compiled=not args.no_compiled)
    print(json.dumps(report, indent=2) if args.json else count.format_report(report))
    return 0


def _bench_train(args) -> int:
    if args.steps <= 0:
        raise config_lib.ConfigError([f"--steps: {args.steps} must be a positive integer"])
    config = _load(args)
    from train.bench import bench_train, format_bench

    result = bench_train(config, steps=args.steps)
    print(json.dumps(result, indent=2) if args.json else format_bench(result, args.steps))
    return 0


def _bench_jit(args) -> int:
    config = _load(args)
    from train.jit_overhead import compare_jit

    result = compare_jit(config, repeats=args.repeats)
    print(f"nnx.jit {1000 * result['nnx_jit_seconds']:.2f} ms/step | jax.jit over split state "
          f"{1000 * result['jax_jit_split_seconds']:.2f} ms/step (median of {args.repeats})")
    return 0


def _serve(config: config_lib.Config) -> None:
    """The host runtime of an inference command, settled by the model's precision before JAX starts."""
    from train.runtime import configure_host_runtime

    configure_host_runtime(serving_precision=config.model.precision)


def _generate(args) -> int:
    from train.generate import Sampling, generate_text, run_config

    _serve(run_config(args.run_dir))
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = generate_text(args.run_dir, args.prompt, args.max_tokens, sampling, args.seed, write=write)
    print()
    print(f"{len(result['ids'])} tokens in {result['seconds']:.2f} s (compilation included) from checkpoint "
          f"step {result['step']}", file=sys.stderr)
    return 0


def _bench_infer(args) -> int:
    from train import bench_infer

    _serve(bench_infer.target_config(args.target, args.overrides))
    request = bench_infer.Request(bench_infer.parse_batches(args.batch), args.prompt_len, args.gen_len, args.repeats)
    result, run_path = bench_infer.run(args.target, args.overrides, request)
    print(json.dumps(result, indent=2) if args.json else bench_infer.format_result(result))
    if run_path is not None:
        print(f"recorded under `inference` in {run_path / 'summary.json'}", file=sys.stderr)
    return 0
