"""jax-free foundations every other package shares: the validation toolkit, the run-directory contract,
durable file writes and locks, warn-once, and the project's named vocabularies (FLOP conventions,
parameter-count kinds, precision policies). Nothing here imports jax, numpy or another isoflop package,
so `analysis/` and `launch/` can use it without pulling in the trainer."""
