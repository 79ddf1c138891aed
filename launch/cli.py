"""The `isoflop` console script: one entry point, each package registers its own sub-commands.

Every sub-command returns an exit code. Bad input prints one line per problem and exits 2 before anything
is written; a failed write or a directory held by another process prints one line and exits 1
(docs/CONVENTIONS.md, "Errors and exit codes").
"""

from __future__ import annotations

import argparse
import sys

from common.files import LockedError, WriteError
from common.validation import ConfigError


def build_parser() -> argparse.ArgumentParser:
    # Imported here so `isoflop --help` stays fast and analysis never pulls in jax.
    from analysis import cli as analysis_cli
    from launch import grid_cli
    from train import cli as train_cli

    parser = argparse.ArgumentParser(prog="isoflop", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_cli.register(commands)
    analysis_cli.register(commands)
    grid_cli.register(commands)
    return parser


# Inference-only commands: they settle the host allocator themselves once their config says the model's
# precision, before JAX starts (train/runtime.py).
SERVING_COMMANDS = (("generate",), ("bench", "infer"))


def main(argv: list[str] | None = None) -> int:
    from train.runtime import configure_host_runtime

    words = sys.argv[1:] if argv is None else argv
    if not any(tuple(words[:len(command)]) == command for command in SERVING_COMMANDS):
        try:
            configure_host_runtime()  # before anything starts JAX: glibc must keep XLA:CPU's step buffer
        except ConfigError as err:
            print(f"isoflop: {err.problems[0]}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "bench_kind", None))))  # e.g. "bench infer"
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        for problem in err.problems:
            print(f"isoflop {command}: {problem}", file=sys.stderr)
        return 2
    except (WriteError, LockedError) as err:
        print(f"isoflop {command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
