"""Adversarial tests of `score.rewards.sandbox`: every hostile program ends as a failure or a
timeout within its limits, nothing outside the sandbox is touched, and the grader keeps
grading afterwards."""

import os
import resource
import socket
import tempfile
import textwrap
import time

import pytest

from score.rewards import sandbox

ISO = sandbox.isolation()
AS_ROOT = os.geteuid() == 0
SANDBOX_UID_MIN = sandbox._UID_BASE


@pytest.fixture(params=["namespaces", "fallback"])
def mode(request, monkeypatch):
  """Runs a test with the namespaces this machine gives, and again without any (the
  fallback: per-run uid when root, audit-hook network guard, process-group kill)."""
  if request.param == "fallback":
    if not AS_ROOT:
      pytest.skip("the no-namespace fallback protects files only when the grader is root")
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
  return request.param


def _still_grades():
  """The grader survives: a passing program still passes, a failing one still fails."""
  ok = sandbox.run("def f(x):\n    return x + 1\n", "assert f(1) == 2\nprint('ok')")
  assert ok.status == "passed", (ok, ok.stderr)
  assert ok.stdout == "ok\n"
  bad = sandbox.run("def f(x):\n    return x\n", "assert f(1) == 2")
  assert bad.status == "failed" and "AssertionError" in bad.stderr


def _live_processes_of(uid, wait_s=2.0):
  """PIDs of live (not zombie) processes owned by `uid`, after up to `wait_s` for SIGKILLed
  processes to finish dying."""
  deadline = time.monotonic() + wait_s
  while True:
    pids = _scan_processes_of(uid)
    if not pids or time.monotonic() > deadline:
      return pids
    time.sleep(0.05)


def _scan_processes_of(uid):
  pids = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        st = os.stat(f"/proc/{name}")
        with open(f"/proc/{name}/stat") as f:
          state = f.read().rsplit(")", 1)[1].split()[0]
      except OSError:
        continue
      if st.st_uid == uid and state != "Z":
        pids.append(int(name))
  return pids


def test_isolation_probe_runs_here():
  assert "error" not in ISO, ISO
  assert ISO["python"]
  assert ISO["network_guard"] in ("namespace", "audit-hook")


def test_passing_failing_and_syntax_error():
  r = sandbox.run("x = 2\n", "assert x * 3 == 6")
  assert (r.passed, r.status, r.returncode, r.reason) == (True, "passed", 0, "")
  r = sandbox.run("def f(:\n  pass")
  assert (r.passed, r.status) == (False, "failed")
  assert "SyntaxError" in r.stderr
  r = sandbox.run("import sys; sys.exit(3)")
  assert (r.status, r.returncode, r.reason) == ("failed", 3, "exit code 3")
  r = sandbox.run("raise SystemExit(0)", require_end=False)
  assert r.passed


@pytest.mark.parametrize("early_exit", [
    "import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
])
def test_exiting_before_the_tests_is_not_a_pass(early_exit):
  r = sandbox.run("print('hi')\n" + early_exit, "assert False, 'tests never ran'")
  assert r.status == "failed", (early_exit, r)
  assert "score-sandbox-end" not in r.stdout  # os._exit may also drop the buffered "hi"


def test_end_marker_is_removed_from_stdout():
  r = sandbox.run("import sys\nsys.stdout.write('no newline')", "pass")
  assert r.passed and r.stdout == "no newline"
  r = sandbox.run("import atexit\natexit.register(lambda: print('bye'))\nprint('hi')")
  assert r.passed and r.stdout == "hi\nbye\n"


def test_program_and_tests_are_joined_by_newline():
  r = sandbox.run("def f():\n    return 1", "assert f() == 1")  # no trailing newline
  assert r.passed, r.stderr


def test_standard_library_only_and_scrubbed_environment(mode, monkeypatch):
  monkeypatch.setenv("SCORE_TEST_SECRET", "s3cr3t-value-do-not-leak")
  prog = textwrap.dedent("""
        import os, sys
        print(sorted(os.environ))
        print(repr(os.environ.get("SCORE_TEST_SECRET")))
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    print(open(f"/proc/{pid}/environ", "rb").read())
                except OSError as e:
                    print("denied", pid)
        for path in ("/proc/1/environ", f"/proc/{os.getppid()}/environ"):
            try:
                print(open(path, "rb").read())
            except OSError as e:
                print("denied", path)
        print("site" in sys.modules, sys.flags.isolated, sys.flags.no_site)
    """)
  r = sandbox.run(prog)
  assert r.passed, r.stderr
  assert "s3cr3t-value-do-not-leak" not in r.stdout + r.stderr
  env_keys = eval(r.stdout.splitlines()[0])  # a list literal printed by the program
  assert set(env_keys) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "MALLOC_ARENA_MAX"}
  assert r.stdout.splitlines()[-1] == "False 1 1"


def test_infinite_loop_times_out_within_limit(mode):
  t0 = time.monotonic()
  r = sandbox.run("while True:\n    pass\n", timeout_s=1.0)
  elapsed = time.monotonic() - t0
  assert (r.passed, r.status) == (False, "timeout")
  assert 1.0 <= elapsed < 5.0
  r = sandbox.run("import time\ntime.sleep(60)\n", timeout_s=0.5)  # sleeping, no CPU
  assert r.status == "timeout" and r.elapsed_s < 4.0
  _still_grades()


def test_memory_bomb_fails_within_limits():
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  r = sandbox.run("x = []\nwhile True:\n    x.append(bytearray(10**7))\n",
                  memory_mb=256, timeout_s=10.0)
  assert (r.passed, r.status) == (False, "failed")
  assert "MemoryError" in r.stderr
  r2 = sandbox.run("x = bytearray(50 * 2**30)", memory_mb=256)
  assert r2.status == "failed" and "MemoryError" in r2.stderr
  # No child of ours ever held more than the limit (ru_maxrss is in KiB).
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  assert peak <= max(before, 300 * 1024), peak  # earlier children of a long run may hold more
  _still_grades()


def test_fork_bomb_is_contained(mode):
  bomb = textwrap.dedent("""
        import os
        print(os.getuid(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
  t0 = time.monotonic()
  r = sandbox.run(bomb, timeout_s=2.0, max_processes=16)
  assert r.status in ("timeout", "failed")
  assert time.monotonic() - t0 < 10.0
  if AS_ROOT:
    uid = int(r.stdout.split()[0])
    assert uid >= SANDBOX_UID_MIN
    assert _live_processes_of(uid) == []
  _still_grades()


@pytest.mark.skipif(not AS_ROOT, reason="per-run uid (RLIMIT_NPROC per run) needs root")
def test_process_limit_is_enforced_per_run():
  prog = textwrap.dedent("""
        import os, time
        n = 0
        try:
            for _ in range(40):
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                n += 1
        except OSError as e:
            print("blocked after", n)
            raise SystemExit(1)
    """)
  r = sandbox.run(prog, max_processes=8, timeout_s=5.0)
  assert r.status == "failed", (r, r.stderr)
  assert "blocked after" in r.stdout
  assert int(r.stdout.split()[-1]) < 8


def test_kill_parent_and_everyone_leaves_the_grader_alive(mode):
  for prog in ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
               "import os, signal\nos.killpg(0, signal.SIGKILL)\n"):
    r = sandbox.run(prog, timeout_s=3.0)
    assert r.status != "passed", (prog, r)
  if ISO["pid"] or AS_ROOT:  # kill(-1) only reaches our own processes there.
    r = sandbox.run("import os, signal\nos.kill(-1, signal.SIGKILL)\nimport time\n"
                    "time.sleep(0.2)\nprint('alive')\n", timeout_s=3.0)
    assert r.status in ("failed", "passed", "timeout")
  _still_grades()


@pytest.mark.skipif(not (ISO["pid"] or AS_ROOT), reason="needs a PID namespace or a sandbox uid")
def test_no_process_survives_the_run_even_after_setsid(mode, tmp_path):
  prog = textwrap.dedent("""
        import os, time
        print(os.getuid())
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(30)
            os._exit(0)
        print("spawned")
    """)
  r = sandbox.run(prog, timeout_s=3.0)
  assert r.passed and r.stdout.endswith("spawned\n"), (r, r.stderr)
  if AS_ROOT:
    assert _live_processes_of(int(r.stdout.split()[0])) == []


def test_canary_outside_the_sandbox_is_untouched(mode, tmp_path):
  canary = tmp_path / "canary.txt"
  canary.write_text("precious")
  os.chmod(tmp_path, 0o755)
  os.chmod(canary, 0o644)
  prog = textwrap.dedent(f"""
        import os, shutil
        path = {str(canary)!r}
        attempts = [
            lambda: os.remove(path),
            lambda: open(path, "w").write("pwned"),
            lambda: os.chmod(path, 0o777),
            lambda: os.rename(path, path + ".moved"),
            lambda: shutil.rmtree(os.path.dirname(path)),
            lambda: os.remove("/proc/1/root" + path),
            lambda: os.remove(f"/proc/{{os.getppid()}}/root" + path),
        ]
        for attempt in attempts:
            try:
                attempt()
                print("succeeded")
            except OSError as e:
                print("refused", type(e).__name__)
        raise SystemExit(1)
    """)
  r = sandbox.run(prog, timeout_s=5.0)
  assert r.status == "failed"
  assert canary.read_text() == "precious"
  assert oct(canary.stat().st_mode & 0o777) == oct(0o644)
  assert "succeeded" not in r.stdout, r.stdout
  _still_grades()


def test_repository_is_not_writable_from_the_sandbox(mode):
  if not (AS_ROOT or ISO.get("read_only_root")):
    pytest.skip("the grader's own files are protected only by a separate uid or a "
                "read-only mount namespace")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  target = os.path.join(repo, f"sandbox-escape-{os.getpid()}.txt")
  r = sandbox.run(f"open({target!r}, 'w').write('escaped')\n")
  try:
    assert r.status == "failed", r
    # A checkout under /tmp is hidden behind the sandbox's private /tmp (FileNotFoundError).
    assert any(e in r.stderr for e in ("PermissionError", "Read-only file system",
                                       "FileNotFoundError")), r.stderr
    assert not os.path.exists(target)
  finally:
    if os.path.exists(target):
      os.remove(target)


def test_private_working_directory_is_fresh_and_removed(tmp_path, monkeypatch):
  if ISO["mnt"]:  # The job directory is then only the grader's; put it where we can look.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  prog = textwrap.dedent("""
        import os
        print(os.getcwd(), os.environ["HOME"], sorted(os.listdir(".")))
        with open("leftover.txt", "w") as f:
            f.write("x")
        with open(os.path.join(os.environ["TMPDIR"], "also.txt"), "w") as f:
            f.write("y")
    """)
  r1 = sandbox.run(prog)
  r2 = sandbox.run(prog)
  assert r1.passed and r2.passed, (r1.stderr, r2.stderr)
  cwd, home, listing = r2.stdout.split(" ", 2)
  assert cwd == home
  assert listing.strip() == "['main.py']"  # the first run's files are gone
  if ISO["mnt"]:
    assert os.listdir(tmp_path) == []  # job directories deleted
  else:
    assert not os.path.exists(cwd)


def test_gigabyte_of_stdout_is_truncated_quickly():
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  prog = "import sys\nblock = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(block)\n"
  t0 = time.monotonic()
  r = sandbox.run(prog, timeout_s=20.0, max_output_bytes=10_000, file_size_mb=16)
  elapsed = time.monotonic() - t0
  assert r.status == "failed", r
  assert elapsed < 15.0
  assert len(r.stdout) < 10_200 and "bytes truncated" in r.stdout
  assert r.stdout.startswith("xxxx")
  # The grader never buffered the gigabyte (ru_maxrss in KiB).
  assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200 * 1024
  r = sandbox.run("import sys\nwhile True:\n    sys.stderr.write('e' * 65536)\n",
                  timeout_s=20.0, max_output_bytes=1000)
  assert r.status == "failed" and len(r.stderr) < 1200
  _still_grades()


@pytest.mark.skipif(not ISO["mnt"], reason="the private tmpfs needs a mount namespace")
def test_private_tmpfs_is_size_limited():
  prog = textwrap.dedent("""
        import os
        block = b"x" * (1 << 20)
        for i in range(64):
            with open(os.path.join(os.environ["TMPDIR"], f"f{i}"), "wb") as f:
                f.write(block)
    """)
  r = sandbox.run(prog, disk_mb=8, timeout_s=10.0)
  assert r.status == "failed" and "No space left on device" in r.stderr, r.stderr
  _still_grades()


def test_output_under_the_cap_is_kept_exactly():
  r = sandbox.run("print('a' * 1000)\nimport sys\nprint('b', file=sys.stderr)\n")
  assert r.stdout == "a" * 1000 + "\n" and r.stderr == "b\n"


def test_network_socket_to_local_listener_never_connects(mode):
  listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  listener.bind(("127.0.0.1", 0))
  listener.listen(4)
  listener.settimeout(0.5)
  port = listener.getsockname()[1]
  prog = textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.0)
        s.connect(("127.0.0.1", {port}))
        s.sendall(b"leak")
        print("connected")
    """)
  try:
    r = sandbox.run(prog, timeout_s=5.0)
    assert r.status == "failed", (r, r.stdout)
    assert "connected" not in r.stdout
    with pytest.raises(socket.timeout):
      listener.accept()
  finally:
    listener.close()
  _still_grades()


def test_audit_hook_guard_refuses_inet_sockets():
  prog = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
  r = sandbox.run(prog, network_guard=True)
  assert r.status == "failed" and "network access is disabled" in r.stderr
  r = sandbox.run("import socket\na, b = socket.socketpair()\nprint(__name__)\n",
                  network_guard=True)
  assert r.passed and r.stdout == "__main__\n", r.stderr  # AF_UNIX still allowed


def test_run_many_keeps_order_and_isolates_jobs():
  jobs = [
      "print(1)",
      ("def f():\n    return 2", "assert f() == 2"),
      ("def f():\n    return 2", "assert f() == 3"),
      {"program": "while True: pass", "timeout_s": 0.5},
      {"program": "import os\nos.kill(os.getppid(), 9)"},
      "print('last')",
  ]
  results = sandbox.run_many(jobs, max_workers=3, timeout_s=5.0)
  assert [r.status for r in results] == [
      "passed", "passed", "failed", "timeout", "failed", "passed"]
  assert results[0].stdout == "1\n" and results[-1].stdout == "last\n"
  assert sandbox.run_many([]) == []
  with pytest.raises(TypeError, match="job 0"):
    sandbox.run_many([42])


def test_invalid_limits_are_rejected():
  with pytest.raises(ValueError, match="timeout_s"):
    sandbox.run("pass", timeout_s=0)
  with pytest.raises(ValueError, match="memory_mb"):
    sandbox.run("pass", memory_mb=-1)


def test_missing_interpreter_is_an_error_not_a_crash():
  r = sandbox.run("pass", python="/nonexistent/python3")
  assert (r.passed, r.status) == (False, "error")
  assert "starting the program" in r.reason or "no Python" in r.reason


def test_concurrent_fork_bombs_do_not_disturb_other_jobs():
  bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
  jobs = [{"program": bomb, "timeout_s": 1.5} if i % 4 == 0 else (f"x = {i}", f"assert x == {i}")
          for i in range(8)]
  results = sandbox.run_many(jobs, max_workers=4, timeout_s=10.0)
  assert [r.status for r in results] == [
      "timeout" if i % 4 == 0 else "passed" for i in range(8)], [r.reason for r in results]
