"""Orbax checkpoints of everything a bit-exact resume needs: params, optimizer state, the data
iterator's position and the run's accumulators (tokens, FLOPs, wall time, energy).

Saves are asynchronous (training continues while the previous step is written); Orbax writes each
step into a temporary directory and renames it when complete, so a kill mid-save never leaves a
checkpoint that restore would trust. A failed write (disk full, read-only) surfaces at the next
`save`, `check` or `close` as a one-line `common.files.WriteError`; the failed step is never
finalized, so the latest checkpoint stays the last good one. Orbax's own error logs of such a failure
(several tracebacks from its background threads) are held back: the WriteError is the report.

A WSD stable run also keeps the checkpoints of its branch points (`keep_steps`) whatever `keep` says;
a branch restores one of them read-only (`restore_branch_point`), its data iterator state included.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib

import jax
import orbax.checkpoint as ocp

from common.files import WriteError


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind an Orbax failure (Orbax and asyncio wrap and chain them), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"checkpoint save failed ({type(err).__name__}: {text[0] if text else 'no message'})"


class _OrbaxTracebacks(logging.Filter):
    """Drops Orbax's error logs that carry a traceback: the failure reaches us as an exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and "/orbax/" in record.pathname.replace("\\", "/"))


_FILTER = _OrbaxTracebacks()


def _preservation(keep: int, keep_steps: tuple[int, ...]):
    """The latest `keep` checkpoints, and every one of `keep_steps` (branch points)."""
    policies = ocp.checkpoint_managers.preservation_policy
    return policies.AnyPreservationPolicy([policies.LatestN(keep), policies.CustomSteps(list(keep_steps))])


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, keep: int, async_save: bool = True,
                 keep_steps: tuple[int, ...] = (), read_only: bool = False):
        self.directory = pathlib.Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(preservation_policy=_preservation(keep, keep_steps),
                                               enable_async_checkpointing=async_save, create=not read_only,
                                               read_only=read_only)
        logging.getLogger("absl").addFilter(_FILTER)  # idempotent: a filter is added once
        with self._write_errors():
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    @contextlib.contextmanager
    def _write_errors(self):
        """Any Orbax failure to write as a one-line WriteError: the OSError behind it (ENOSPC, EACCES,
        EROFS...) where there is one, else the first line of what Orbax (or TensorStore) raised."""
        try:
            yield
        except WriteError:
            raise
        except Exception as err:
            cause = _os_error(err)
            if cause is None:
                raise WriteError(self.directory, _first_line(err)) from None
            raise WriteError(cause.filename or self.directory, cause) from None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def check(self) -> None:
        """Raise the WriteError of an asynchronous save that failed since the last call."""
        with self._write_errors():
            self.manager.check_for_errors()

    def save(self, step: int, params, opt_state, data_state: dict, accumulators: dict) -> None:
        with self._write_errors():
            self._save(step, params, opt_state, data_state, accumulators)

    def _save(self, step: int, params, opt_state, data_state: dict, accumulators: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                data_state=ocp.args.JsonSave(data_state),
                accumulators=ocp.args.JsonSave(accumulators),
            ),
            force=True,
        )

    def restore(self, step: int, params_like, opt_state_like):
        """Restore into the structure, dtypes and shardings of the given (abstract or concrete) state."""

        def abstract(tree):
            return jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
            )

        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract(params_like)),
                opt_state=ocp.args.StandardRestore(abstract(opt_state_like)),
                data_state=ocp.args.JsonRestore(),
                accumulators=ocp.args.JsonRestore(),
            ),
        )
        return restored.params, restored.opt_state, restored.data_state, restored.accumulators

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def close(self) -> None:
        """Block until pending async saves are on disk; a failed one raises WriteError."""
        try:
            with self._write_errors():
                self.manager.wait_until_finished()
                self.manager.check_for_errors()
        finally:
            self.manager.close()


def restore_branch_point(directory: str | pathlib.Path, step: int, params_like, opt_state_like):
    """(params, opt_state, data_state, accumulators) of the checkpoint at `step` of another run (a WSD
    stable run), opened read-only; ConfigError (one line) when that checkpoint is not there."""
    from train.config import ConfigError

    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise ConfigError([f"run.branch_from: {directory.parent} has no checkpoints (train the stable run first)"])
    source = Checkpointer(directory, keep=1, async_save=False, read_only=True)
    try:
        if step not in source.all_steps():
            raise ConfigError([f"run.branch_from: {directory.parent} has no checkpoint at the branch point, step "
                               f"{step} (it has {source.all_steps() or 'none'}; its run.branch_points must list "
                               f"{step})"])
        return source.restore(step, params_like, opt_state_like)
    finally:
        source.manager.close()
