"""CPU slots for local runs side by side: each concurrent run gets its own share of this machine's cores.

Why: XLA:CPU spreads one small model's matmuls over every core poorly, so two runs that share two cores
each get less than half a machine, and one run alone leaves a core half idle. Measured on a 2-core
AMD EPYC (Zen 4), 200 steps of the grids' 2-layer models (docs/GRIDS.md has the table): width 16 trains
at 200k tokens/s alone, 263k for two together unpinned, 290-340k for two pinned one core each; width
64 at 62k, 78k and 86k. So `isoflop grid run --max-parallel K` on the local executor pins run i to slot
i's cores: the scheduler affinity, which XLA's CPU thread pool is sized by and which the trainer's CPU
peak, energy and calibration caches read as its usable cores. A one-core slot also turns Eigen's
multi-threading off (`XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`, worth ~20% there: one thread
only adds hand-offs).

Numerics follow the thread count (XLA may split a reduction across threads), so a run trained in a
one-core slot is not bitwise the same run trained on two cores; resuming is exact within a slot size.
"""

from __future__ import annotations

import os

XLA_FLAGS = "XLA_FLAGS"
SINGLE_CORE_FLAG = "--xla_cpu_multi_thread_eigen=false"


def partition(cores: list[int], slots: int) -> list[tuple[int, ...]] | None:
    """`slots` disjoint, contiguous groups of `cores` whose sizes differ by at most one; None when there
    are fewer cores than slots (runs then share the cores, unpinned)."""
    if slots < 2 or len(cores) < slots or not hasattr(os, "sched_setaffinity"):
        return None
    size, extra = divmod(len(cores), slots)
    groups, start = [], 0
    for index in range(slots):
        end = start + size + (index < extra)
        groups.append(tuple(cores[start:end]))
        start = end
    return groups


def environment(cores: tuple[int, ...], base: dict[str, str]) -> dict[str, str]:
    """`base` for a run in a slot of `cores`: Eigen's threading off for one core (XLA_FLAGS given are kept,
    after, so they win)."""
    if len(cores) > 1:
        return dict(base)
    given = base.get(XLA_FLAGS, "").strip()
    return {**base, XLA_FLAGS: " ".join([SINGLE_CORE_FLAG] + ([given] if given else []))}


def pin(cores: tuple[int, ...]):
    """A `preexec_fn` for subprocess.Popen: the child runs on `cores` only."""
    def set_affinity():
        os.sched_setaffinity(0, cores)
    return set_affinity


def describe(groups: list[tuple[int, ...]]) -> str:
    return ", ".join("cores " + ",".join(map(str, group)) for group in groups)


__all__ = ["describe", "environment", "partition", "pin"]
