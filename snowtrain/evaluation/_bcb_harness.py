"""The program that runs one BigCodeBench solution against its unittest class, with
bigcodebench 0.2.5's rules (eval/__init__.py unsafe_execute, eval/utils.py safe_environment,
reliability_guard, swallow_io, time_limit). bigcodebench.py appends this source to
_plus_harness.py's (for its output sink and `failed`), then `_check_bcb(<data>)`; it is never
imported.

It ends in one of three ways, read by execution.run_program: falling through to the program's
epilogue (passed); writing why to stderr and exiting 1 (failed); or ending itself with SIGXCPU
(reported "timed out") when the suite's time limit runs out outside a test.
"""
import contextlib
import os
import signal
import subprocess
import sys
import time

if False:  # defined by _plus_harness.py, whose source comes first in the program
    from ._plus_harness import _swallowed, failed


class TimeoutException(Exception):  # BigCodeBench's, raised inside the running test
    pass


def _on_alarm(signum, frame):
    raise TimeoutException("Timed out!")


@contextlib.contextmanager
def _swallowed_bcb():
    """swallow_io: stdout, stderr and stdin redirected (as EvalPlus's); subprocesses' output piped
    by default."""
    popen, run = subprocess.Popen, subprocess.run

    def piped(kwargs):
        if kwargs.get("capture_output"):
            kwargs.pop("stdout", None)
            kwargs.pop("stderr", None)
        else:
            kwargs.setdefault("stdout", subprocess.PIPE)
            kwargs.setdefault("stderr", subprocess.PIPE)
        return kwargs

    subprocess.Popen = lambda *a, **k: popen(*a, **piped(k))
    subprocess.run = lambda *a, **k: run(*a, **piped(k))
    try:
        with _swallowed():
            yield
    finally:
        subprocess.Popen, subprocess.run = popen, run


def _safe_environment():
    """safe_environment: kill, killpg, system, subprocess and exec calls are intercepted (a kill
    of a process this one did not start is refused; a `ps` yields nothing; exec does nothing)."""
    original_kill, original_killpg = os.kill, os.killpg
    original_system, original_popen_fn = os.system, os.popen
    original_call, original_check_output = subprocess.call, subprocess.check_output
    original_run, original_popen = subprocess.run, subprocess.Popen
    current_pid = os.getpid()
    current_pgid = os.getpgid(current_pid)
    child_pids = []

    def safe_kill(pid, sig):
        try:
            os.getpgid(pid)
            if pid == current_pid or pid in child_pids:
                original_kill(pid, sig)
            else:
                print(f"Prevented attempt to kill PID {pid} with signal {sig}")
        except ProcessLookupError:
            pass

    def safe_killpg(pgid, sig):
        if pgid == current_pgid or pgid in {os.getpgid(pid) for pid in child_pids}:
            original_killpg(pgid, sig)
        else:
            print(f"Prevented attempt to kill PGID {pgid} with signal {sig}")

    def safe_system(command):
        print(f"Intercepted system command: {command}")
        if "kill" in command or "killall" in command:
            return 0
        return original_system(command)

    def safe_call(command, *args, **kwargs):
        print(f"Intercepted subprocess call: {command}")
        if "kill" in command or "killall" in command:
            return 0
        return original_call(command, *args, **kwargs)

    def safe_check_output(command, *args, **kwargs):
        print(f"Intercepted command: {command}")
        if "ps" in command:
            return b""
        return original_check_output(command, *args, **kwargs)

    def safe_run(*args, **kwargs):
        print(f"Intercepted subprocess run command: {args}")
        if "kill" in args[0] or "killall" in args[0]:
            return subprocess.CompletedProcess(args, 0, b"", b"")
        return original_run(*args, **kwargs)

    class SafePopen(original_popen):
        def __init__(self, *args, **kwargs):
            print(f"Intercepted Popen command: {args}")
            kwargs["preexec_fn"] = os.setsid
            super().__init__(*args, **kwargs)
            child_pids.append(self.pid)

        def communicate(self, *args, **kwargs):
            try:
                return super().communicate(*args, **kwargs)
            except subprocess.TimeoutExpired:
                print("Timeout expired, intercepted and returning None")
                return None, None

        def kill(self):
            print(f"Intercepted kill call for PID {self.pid}")
            safe_kill(self.pid, signal.SIGTERM)

        def terminate(self):
            print(f"Intercepted terminate call for PID {self.pid}")
            safe_kill(self.pid, signal.SIGTERM)

    def safe_os_popen(command):
        print(f"Intercepted os.popen command: {command}")
        if "kill" in command or "killall" in command:
            return original_popen_fn("echo Intercepted")
        return original_popen_fn(command)

    def safe_exec(*args, **kwargs):
        print(f"Intercepted exec command: {args}")

    os.kill, os.killpg, os.system, os.popen = safe_kill, safe_killpg, safe_system, safe_os_popen
    subprocess.call, subprocess.check_output = safe_call, safe_check_output
    subprocess.run, subprocess.Popen = safe_run, SafePopen
    os.execv = os.execvp = os.execvpe = safe_exec
    return child_pids  # the processes the program starts, for _reap


def _reliability_guard(memory_mib, stack_mib):
    """reliability_guard: UTC, one OpenMP thread, address-space/data/stack limits, exit() and
    quit() gone, matplotlib's figures closed. Not a sandbox."""
    import builtins
    import faulthandler
    import resource
    os.environ["TZ"] = "UTC"
    time.tzset()
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    for r, mib in ((resource.RLIMIT_AS, memory_mib), (resource.RLIMIT_DATA, memory_mib),
                   (resource.RLIMIT_STACK, stack_mib)):
        try:
            resource.setrlimit(r, (mib * 1024 * 1024, mib * 1024 * 1024))
        except (ValueError, OSError):
            pass
    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    try:
        import matplotlib.pyplot as plt  # BigCodeBench's environment always has it
        plt.close("all")
    except ImportError:
        pass


def _last_line(text):
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return (lines[-1] if lines else "error")[:200]


def _exception_line(trace):
    """The `Error: message` line of a traceback (an assertion's diff may follow it)."""
    lines = str(trace).splitlines()
    frames = [i for i, ln in enumerate(lines) if ln.startswith("  File ")]
    for ln in lines[frames[-1] + 1 if frames else 0:]:
        if ln.strip() and not ln.startswith(" "):
            return ln.strip()[:200]
    return _last_line(trace)


def _reap(children, kill):
    """safe_environment's exit: each process the program started gets SIGTERM, then SIGKILL when
    it has not ended a second later (they run in their own sessions, out of the program's group)."""
    for child in children:
        try:
            kill(child, signal.SIGTERM)
            for _ in range(10):
                time.sleep(0.1)
                if os.waitpid(child, os.WNOHANG)[0]:
                    break
            else:
                kill(child, signal.SIGKILL)
        except (ProcessLookupError, ChildProcessError):
            pass


def _check_bcb(d):
    """unsafe_execute, or with d["trusted"] trusted_exec (the canonical solution: its module-level
    code runs before the I/O and subprocess patches, which then cover the suite only)."""
    import builtins
    import tempfile
    import types
    import unittest
    kill, pid, trusted = os.kill, os.getpid(), d["trusted"]
    children = [] if trusted else _safe_environment()
    os.chdir(tempfile.mkdtemp())  # create_tempdir: a fresh, empty working folder
    _reliability_guard(d["memory_mib"], d["stack_mib"])
    module = types.ModuleType("__test__")
    module.__dict__.update({"__builtins__": builtins, "__file__": "__test__.py", "__package__": None,
                            "__doc__": None, "sys": sys, "os": os, "environ": os.environ})
    issues, why = [], None
    try:
        with contextlib.ExitStack() as patched:
            if not trusted:
                patched.enter_context(_swallowed_bcb())
            exec(compile(d["code"] + "\n" + d["test"], "__test__.py", "exec"), module.__dict__)
            sys.modules["__test__"] = module
            suite = unittest.TestLoader().loadTestsFromTestCase(getattr(module, "TestCases"))
            result = unittest.TestResult()
            if trusted:
                children = _safe_environment()
                patched.enter_context(_swallowed_bcb())
            signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, d["suite_limit_s"])
            try:
                suite.run(result)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        issues = result.failures + result.errors
    except TimeoutException:
        _reap(children, kill)
        signal.signal(signal.SIGXCPU, signal.SIG_DFL)
        kill(pid, signal.SIGXCPU)
        time.sleep(5)
        failed("timed out")
    except BaseException as e:
        why = _last_line(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    _reap(children, kill)
    if why:
        failed(why)
    if issues:
        test, trace = issues[0]
        name = test.id().split(".")[-1]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        failed(f"{name}: {_exception_line(trace)}{more}")
