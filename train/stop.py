"""SIGTERM/SIGINT as a flag the trainer checks, from as early as the command wants (jax-free).

A training stops only where it is safe: between steps (after a checkpoint of the step reached) or
between setup phases (with one line, see train/loop.py). The command line enters `catching()` before it
imports JAX, so a signal during the imports is remembered instead of killing the process with no word;
the trainer enters it again. Nested entries share one flag; the outermost exit restores the previous
handlers and forgets the signal, so a later training in the same process starts clean.
"""

from __future__ import annotations

import contextlib
import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(RuntimeError):
    """A stop signal arrived before training began; str() is one line, and the directory (if any) resumes."""


class StopFlag:
    """The name of the first stop signal received while catching (None: none)."""

    def __init__(self):
        self.received: str | None = None
        self._depth = 0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name

    def raise_if_received(self, where: str) -> None:
        if self.received is not None:
            raise Interrupted(f"interrupted by {self.received} {where}; nothing was written, rerun to continue")


FLAG = StopFlag()


@contextlib.contextmanager
def catching():
    """Hold SIGTERM/SIGINT as `FLAG.received` for the duration (nestable)."""
    if FLAG._depth == 0:
        FLAG.received = None
        FLAG._previous = {sig: signal.signal(sig, FLAG._handle) for sig in SIGNALS}
    FLAG._depth += 1
    try:
        yield FLAG
    finally:
        FLAG._depth -= 1
        if FLAG._depth == 0:
            for sig, handler in FLAG._previous.items():
                signal.signal(sig, handler)
