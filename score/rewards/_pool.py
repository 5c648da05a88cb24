"""A small process pool that survives hung and crashing tasks.

`concurrent.futures.ProcessPoolExecutor` marks the whole pool broken when one worker dies and
cannot cancel a task that never returns; `multiprocessing.Pool` loses the result of a task
whose worker died. Reward checks run untrusted model output through libraries (sympy,
math-verify) that can hang or blow up, so this pool gives every task its own deadline:

- each task runs in the *main thread* of a worker process (so `signal.alarm`/`setitimer`
  based timeouts inside the task work);
- a task that is not answered by its deadline gets its worker killed (SIGKILL) and a fresh
  worker started; the task's `Outcome` says ``"timeout"``;
- a worker that dies (segfault, `os._exit`, out-of-memory kill) is replaced; its task's
  `Outcome` says ``"worker died"``;
- an exception inside a task becomes ``Outcome(ok=False, error="TypeName: message")``.

`WorkerPool.run` never raises because of what a task did. Workers are fresh ``python`` processes
(never a fork of the caller, which may have started JAX threads, and never a re-import of the
caller's ``__main__``), started lazily and reused across calls.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

Task = tuple[Callable[..., Any], tuple]

# A worker that has not reported "ready" this long after it was started is replaced.
_START_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What became of one task.

  Attributes:
    ok: True when the task returned a value.
    value: the returned value (None when not ok).
    error: None when ok, else ``"timeout after Xs"``, ``"worker died (exit code N)"`` or
      ``"TypeName: message"`` for an exception raised by the task.
  """

  ok: bool
  value: Any = None
  error: str | None = None


def _worker_main(conn_in, conn_out, memory_limit_bytes: int | None) -> None:
  """Worker loop: receive `(task_id, fn, args)`, reply `(task_id, ok, value, error)`."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business.
  if memory_limit_bytes:
    import resource  # pylint: disable=g-import-not-at-top

    try:
      resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    except (ValueError, OSError):  # Not permitted here: run without the limit.
      pass
  while True:
    try:
      msg = conn_in.recv()
    except (EOFError, OSError, KeyboardInterrupt):
      return
    if msg is None:
      return
    task_id, fn, args = msg
    try:
      reply = (task_id, True, fn(*args), None)
    except BaseException as e:  # pylint: disable=broad-except
      try:
        text = f"{type(e).__name__}: {e}"
      except BaseException:  # pylint: disable=broad-except
        text = type(e).__name__
      reply = (task_id, False, None, text[:2000])
    try:
      conn_out.send(reply)
    except Exception as e:  # pylint: disable=broad-except  (e.g. an unpicklable value)
      conn_out.send((task_id, False, None, f"could not send the result back: {e}"[:2000]))


def _serve(fd_in: int, fd_out: int, memory_limit_bytes: int, preload: str) -> None:
  """Entry point of a worker process (``python -c`` started by `_Worker`)."""
  import importlib  # pylint: disable=g-import-not-at-top

  for name in filter(None, preload.split(",")):
    module, _, fn = name.partition(":")
    try:
      mod = importlib.import_module(module)
      if fn:
        getattr(mod, fn)()
    except Exception as e:  # pylint: disable=broad-except
      logger.warning("WorkerPool worker: could not preload %s: %s", name, e)
  conn_in = multiprocessing.connection.Connection(fd_in, writable=False)
  conn_out = multiprocessing.connection.Connection(fd_out, readable=False)
  conn_out.send(("ready", os.getpid()))
  _worker_main(conn_in, conn_out, memory_limit_bytes or None)


_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Worker:
  """One worker: a fresh ``python`` process and two pipes to it.

  A fresh interpreter (not `multiprocessing`'s fork/forkserver/spawn) so that a worker never
  re-imports the caller's ``__main__`` and never inherits the threads of a process that has
  started JAX. When the worker dies, its end of the reply pipe closes and `conn` turns
  readable (EOF), which is how the parent notices.
  """

  def __init__(self, memory_limit_bytes: int | None, preload: Sequence[str]):
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)
    code = ("import sys; from score.rewards._pool import _serve; "
            "_serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])")
    try:
      self.process = subprocess.Popen(
          [sys.executable, "-c", code, str(to_child_r), str(from_child_w),
           str(memory_limit_bytes or 0), ",".join(preload)],
          pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, env=env,
          close_fds=True)
    finally:
      os.close(to_child_r)
      os.close(from_child_w)
    self.send_conn = multiprocessing.connection.Connection(to_child_w, readable=False)
    self.conn = multiprocessing.connection.Connection(from_child_r, writable=False)
    self.started = time.monotonic()
    self.ready = False  # Set when the worker reports that its imports are done.

  @property
  def pid(self) -> int:
    return self.process.pid

  def is_alive(self) -> bool:
    return self.process.poll() is None

  def exitcode(self) -> int | None:
    return self.process.poll()

  def _close_conns(self) -> None:
    for c in (self.send_conn, self.conn):
      try:
        c.close()
      except Exception:  # pylint: disable=broad-except
        pass

  def kill(self) -> None:
    try:
      self.process.kill()
      self.process.wait(5.0)
    except Exception:  # pylint: disable=broad-except
      pass
    self._close_conns()

  def stop(self, wait_s: float = 1.0) -> None:
    try:
      self.send_conn.send(None)
      self.process.wait(wait_s)
    except Exception:  # pylint: disable=broad-except
      pass
    if self.is_alive():
      self.kill()
    else:
      self._close_conns()


class WorkerPool:
  """A pool of worker processes where each task has a deadline.

  Args:
    num_workers: number of processes; default ``min(4, os.cpu_count())``.
    preload: what every worker does before taking tasks: ``"module"`` imports it,
      ``"module:function"`` also calls ``function()`` (a warm-up).
    memory_limit_bytes: RLIMIT_AS for every worker (None: no limit). Allocation beyond it
      raises MemoryError inside the task, which becomes a failed `Outcome`.

  Use as a context manager or call `close()`; functions and arguments must be picklable
  (module-level functions).
  """

  def __init__(
      self,
      num_workers: int | None = None,
      *,
      preload: Sequence[str] = (),
      memory_limit_bytes: int | None = None,
  ):
    if num_workers is None:
      num_workers = min(4, os.cpu_count() or 1)
    if num_workers < 1:
      raise ValueError(f"WorkerPool: num_workers must be >= 1, got {num_workers}")
    self.num_workers = int(num_workers)
    self._preload = tuple(preload)
    self._memory_limit_bytes = memory_limit_bytes
    self._workers: list[_Worker] = []
    self._lock = threading.Lock()
    self._closed = False
    self.num_replaced = 0  # Workers killed or found dead and replaced, over the pool's life.

  @property
  def pids(self) -> list[int]:
    """Process ids of the current workers (empty before the first `run`)."""
    return [w.pid for w in self._workers]

  def _new_worker(self) -> _Worker:
    return _Worker(self._memory_limit_bytes, self._preload)

  def _replace(self, i: int) -> None:
    self._workers[i].kill()
    self._workers[i] = self._new_worker()
    self.num_replaced += 1

  def _ensure_workers(self) -> None:
    while len(self._workers) < self.num_workers:
      self._workers.append(self._new_worker())
    for i, w in enumerate(self._workers):
      if not w.is_alive():
        logger.warning("WorkerPool: worker %d (pid %s) died while idle; replacing it",
                       i, w.pid)
        self._replace(i)

  def map(self, fn: Callable[..., Any], args_list: Sequence[tuple], *, timeout_s: float
         ) -> list[Outcome]:
    """`run` with the same function for every task."""
    return self.run([(fn, tuple(args)) for args in args_list], timeout_s=timeout_s)

  def run(self, tasks: Sequence[Task], *, timeout_s: float) -> list[Outcome]:
    """Runs `tasks` (``(fn, args)`` pairs) in parallel; one `Outcome` per task, in order.

    Each task gets `timeout_s` seconds of wall-clock time from the moment it is handed to a
    worker; tasks go only to workers that have finished starting (imports and `preload`), so
    a worker's start-up never counts against a task. Never raises because of a task; raises
    RuntimeError if the pool is closed.
    """
    if timeout_s <= 0:
      raise ValueError(f"WorkerPool.run: timeout_s must be > 0, got {timeout_s}")
    with self._lock:
      if self._closed:
        raise RuntimeError("WorkerPool.run: the pool is closed")
      outcomes: list[Outcome | None] = [None] * len(tasks)
      if not tasks:
        return []
      self._ensure_workers()
      todo = list(range(len(tasks)))[::-1]  # A stack: pop() gives the lowest index first.
      busy: dict[int, tuple[int, float]] = {}  # worker index -> (task index, deadline).
      start_failures = 0

      while todo or busy:
        # Hand out work to idle, started workers.
        for wi, w in enumerate(self._workers):
          if not todo:
            break
          if wi in busy or not w.ready:
            continue
          ti = todo.pop()
          fn, args = tasks[ti]
          try:
            w.send_conn.send((ti, fn, args))
          except (BrokenPipeError, EOFError, OSError):
            logger.warning("WorkerPool: worker %d (pid %s) died while idle; replacing it",
                           wi, w.pid)
            self._replace(wi)
            todo.append(ti)  # Goes to the next started worker.
            continue
          except Exception as e:  # pylint: disable=broad-except  (unpicklable task)
            outcomes[ti] = Outcome(False, None, f"could not send the task: {e}"[:2000])
            continue
          busy[wi] = (ti, time.monotonic() + timeout_s)

        starting = [wi for wi, w in enumerate(self._workers) if not w.ready]
        if not busy and not starting:
          continue
        now = time.monotonic()
        deadlines = [d for _, d in busy.values()]
        deadlines += [self._workers[wi].started + _START_TIMEOUT_S for wi in starting]
        waitables = [self._workers[wi].conn for wi in list(busy) + starting]
        multiprocessing.connection.wait(waitables, timeout=max(0.0, min(deadlines) - now))
        now = time.monotonic()

        for wi in starting:
          w = self._workers[wi]
          failed = None
          try:
            if w.conn.poll():
              msg = w.conn.recv()
              if msg == ("ready", w.pid):
                w.ready = True
                start_failures = 0
              else:
                failed = f"unexpected start-up message {msg!r:.100}"
          except (EOFError, OSError):
            failed = f"exited during start-up (exit code {w.exitcode()})"
          if failed is None and not w.ready and now >= w.started + _START_TIMEOUT_S:
            failed = f"not started after {_START_TIMEOUT_S:g}s"
          if failed is not None:
            start_failures += 1
            logger.warning("WorkerPool: worker %d (pid %s) %s; replacing it", wi, w.pid, failed)
            self._replace(wi)
            if start_failures > 2 * self.num_workers:
              logger.error("WorkerPool: workers keep failing to start; failing %d tasks",
                           len(todo))
              for ti in todo:
                outcomes[ti] = Outcome(False, None, f"no worker could start: {failed}")
              todo = []

        for wi in list(busy):
          ti, deadline = busy[wi]
          w = self._workers[wi]
          got, got_eof = None, False
          try:
            if w.conn.poll():
              got = w.conn.recv()
          except (EOFError, OSError):
            got_eof = True
          if got is not None:
            task_id, ok, value, error = got
            if task_id != ti:  # Cannot happen with one task per worker; be loud if it does.
              logger.error("WorkerPool: worker %d answered task %s, expected %s; replacing it",
                           wi, task_id, ti)
              outcomes[ti] = Outcome(False, None, "worker protocol error")
              self._replace(wi)
            else:
              outcomes[ti] = Outcome(bool(ok), value, error)
            del busy[wi]
          elif not w.is_alive() or got_eof:
            try:
              w.process.wait(1.0)
            except subprocess.TimeoutExpired:
              pass
            code = w.exitcode()
            outcomes[ti] = Outcome(False, None, f"worker died (exit code {code})")
            logger.warning("WorkerPool: task %d killed its worker (exit code %s); replacing it",
                           ti, code)
            self._replace(wi)
            del busy[wi]
          elif now >= deadline:
            outcomes[ti] = Outcome(False, None, f"timeout after {timeout_s:g}s")
            logger.warning("WorkerPool: task %d ran past its %gs deadline; killing worker pid %s",
                           ti, timeout_s, w.pid)
            self._replace(wi)
            del busy[wi]
      return outcomes  # type: ignore[return-value]

  def close(self) -> None:
    """Stops every worker (politely, then SIGKILL). Idempotent."""
    with self._lock:
      if self._closed:
        return
      self._closed = True
      for w in self._workers:
        w.stop()
      self._workers = []

  def __enter__(self) -> "WorkerPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      if not self._closed:
        for w in self._workers:
          w.kill()
    except Exception:  # pylint: disable=broad-except
      pass
