"""Stopping a run cleanly on SIGTERM (preemption) or SIGINT (Ctrl-C), at a step boundary.

Cloud TPUs and GPUs are preempted with a SIGTERM and a short grace period. While the
training loop runs, `StopSignals` turns both signals into a request that the loop reads at
its next step boundary; the trainer then writes a checkpoint of the step it reached and
raises `Stopped`, which the entry points turn into one line and the conventional exit
status (128 + the signal's number: 143 for SIGTERM, 130 for SIGINT). A second signal while
the checkpoint is written is ignored, so the save completes.

With several processes every one must stop at the same step (they all take part in each
step's collectives and in the checkpoint). There jax's preemption sync point
(`multihost_utils.reached_preemption_sync_point`, served by the coordination service that
`jax.distributed.initialize` starts) tells every process the same step; SIGINT is passed to
it as a SIGTERM so that Ctrl-C on one process stops all of them.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
  """The run stopped on a signal after checkpointing step `step`."""

  def __init__(self, step: int, signum: int):
    self.step = step
    self.signum = signum
    super().__init__(
      f"stopped at step {step} by {signal.Signals(signum).name}; rerun the same command to resume"
    )

  @property
  def exit_status(self) -> int:
    return 128 + self.signum


class Interrupted(Exception):
  """A signal arrived outside the training loop; nothing was lost."""

  def __init__(self, signum: int, what: str):
    self.signum = signum
    super().__init__(
      f"interrupted by {signal.Signals(signum).name} {what}; nothing was lost: rerun the same "
      "command"
    )

  @property
  def exit_status(self) -> int:
    return 128 + self.signum


class StopSignals:
  """Context manager: SIGTERM and SIGINT end the run cleanly.

  Inside `deferred()` (the training loop) a signal becomes a stop request that the loop reads
  with `should_stop(step)` at its next step boundary. Elsewhere (data preparation,
  compilation, the final test) it raises `Interrupted` at once: there is nothing to save.
  Outside the `with` block the previous handlers are back. Installing needs the main thread
  (Python's rule for signal handlers); from another thread this does nothing.
  """

  def __init__(self, what: str = "before training started"):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}
    self._multi_process = jax.process_count() > 1
    self._deferred = False
    self._what = what

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is not threading.main_thread():
      return self
    for signum in SIGNALS:
      if self._multi_process and signum == signal.SIGTERM:
        continue  # jax's preemption notifier owns SIGTERM there.
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def deferred(self, what_after: str) -> _Deferred:
    """A block (the training loop) in which signals wait for `should_stop`; after it, a
    signal is reported as arriving `what_after`."""
    return _Deferred(self, what_after)

  def _handle(self, signum, frame) -> None:
    del frame
    if not self._deferred:
      raise Interrupted(signum, self._what)
    if self.signum is not None:
      return  # Already stopping: let the checkpoint finish.
    self.signum = signum
    if self._multi_process:
      # Reaches jax's preemption notifier, which makes every process stop at one step.
      os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step` (the same answer on every process)."""
    if self._multi_process:
      if multihost_utils.reached_preemption_sync_point(step):
        if self.signum is None:
          self.signum = signal.SIGTERM
        return True
      return False
    return self.signum is not None


class _Deferred:
  def __init__(self, signals: StopSignals, what_after: str):
    self._signals, self._what_after = signals, what_after

  def __enter__(self):
    self._signals._deferred = True

  def __exit__(self, *exc):
    self._signals._deferred = False
    self._signals._what = self._what_after
