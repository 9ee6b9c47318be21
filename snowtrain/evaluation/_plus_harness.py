"""The program that checks one completion on one EvalPlus test set (base or plus), with EvalPlus's
rules (evalplus 0.3.1: evaluate.get_groundtruth, gen.util.trusted_exec, eval.unsafe_execute and
untrusted_check with its default fast_check). plus_check.py copies this source into each program,
followed by `_check(<data>)`; it is never imported.

It ends in one of three ways, read by execution.run_program: falling through to the program's
epilogue (passed); writing why to stderr and exiting 1 (failed); or ending itself with SIGXCPU,
which run_program reports as "timed out", when a time limit of EvalPlus's runs out.
"""
import contextlib
import copy
import io
import math
import os
import signal
import sys
import threading
import time

# EvalPlus's config.py and eval/_special_oracle.py
MIN_TIME_LIMIT, GT_TIME_LIMIT_FACTOR, TIMEOUT_PER_TASK = 1.0, 4.0, 60
MBPP_OUTPUT_NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")
MBPP_OUTPUT_SET_EQ_TASKS = ("similar_elements", "find_char_long", "common_in_nested_lists",
                            "extract_singly", "larg_nnum", "intersection_array", "find_dissimilar",
                            "Diff")


def _poly(xs, x):  # HumanEval/32's oracle: the polynomial's value at x
    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])


def _surface_Area(base_edge, height):  # Mbpp/581's oracle: height as the apex's distance
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 4 * (base_edge * slant) / 2)


def _digit_distance_nums(num1, num2):  # Mbpp/558's oracle: numbers zero-padded to one length
    a, b = str(num1), str(num2)
    width = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width)))


def _is_floats(x):  # EvalPlus's is_floats: a float, a non-empty list/tuple of floats, a float array
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    np = sys.modules.get("numpy")  # an ndarray can only come from code that imported numpy
    if np is not None and isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


class _TimeLimit(Exception):  # an Exception, like EvalPlus's TimeoutException: `except:` catches it
    pass


def _on_alarm(signum, frame):
    raise _TimeLimit()


class _Sink(io.StringIO):  # EvalPlus's swallow_io: output vanishes, reading input fails
    def read(self, *args, **kwargs):
        raise IOError

    readline = readlines = read

    def readable(self, *args, **kwargs):
        return False


class _stdin(contextlib._RedirectStream):
    _stream = "stdin"


@contextlib.contextmanager
def _swallowed():
    sink = _Sink()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _stdin(sink):
        yield


def _describe(e):
    try:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    except BaseException:
        text = type(e).__name__
    return text.splitlines()[0][:200] if text else "error"


def _guard(memory_bytes):
    """EvalPlus's reliability_guard: what it disables fails the same way here (a completion that
    opens files or calls exit() fails in EvalPlus, so it fails here too). Not a sandbox."""
    import builtins
    import faulthandler
    import resource
    import shutil
    import subprocess
    for r in (resource.RLIMIT_AS, resource.RLIMIT_DATA, resource.RLIMIT_STACK):
        try:
            resource.setrlimit(r, (memory_bytes, memory_bytes))
        except (ValueError, OSError):
            pass
    faulthandler.disable()
    builtins.exit = builtins.quit = builtins.help = builtins.open = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
                 "fork", "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink",
                 "fchmod", "fchown", "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown",
                 "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


# taken before the guard disables os.kill and the like
_write, _exit, _kill, _pid = os.write, os._exit, os.kill, os.getpid()


def failed(why):
    _write(2, f"\n{why}\n".encode("utf-8", "replace"))
    _exit(1)


def timed_out():
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    _kill(_pid, signal.SIGXCPU)
    time.sleep(5)  # the signal ends the process first
    failed("timed out")


def _expected_outputs(code, entry_point, inputs, limit_s, which):
    """The canonical solution in its own namespace, on a deep copy of each input, timed
    (EvalPlus's trusted_exec) -> (outputs, seconds); `limit_s` (--timeout-s) for all of it."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        namespace = {}
        exec(code, namespace)
        reference = namespace[entry_point]
        expected, ref_time = [], []
        for inp in inputs:
            inp = copy.deepcopy(inp)
            start = time.time()
            expected.append(reference(*inp))
            ref_time.append(time.time() - start)
        return expected, ref_time
    except _TimeLimit:
        failed(f"the canonical solution did not finish on the {which} in {limit_s:g} s (--timeout-s)")
    except BaseException as e:
        failed(f"the canonical solution raised {_describe(e)} (a broken problems file?)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _check(d):
    where = f"{d['label']} input"
    import pickle
    inputs = pickle.loads(d["inputs"])
    dataset, entry_point = d["dataset"], d["entry_point"]

    # 1. Expected outputs; only "is it not None" for the not-None tasks.
    expected, ref_time = _expected_outputs(d["reference"], entry_point, inputs, d["reference_limit_s"],
                                           f"{d['label']} inputs")
    if dataset == "mbpp" and entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
        expected = [out is not None for out in expected]

    # 2. EvalPlus's limits: each input max(1 s, 4 x the canonical's time); the whole check
    #    min(60 s, their sum) + 2 s, after which untrusted_check's parent gives up on the process.
    time_limits = [max(MIN_TIME_LIMIT, GT_TIME_LIMIT_FACTOR * t) for t in ref_time]
    watchdog = threading.Timer(min(TIMEOUT_PER_TASK, sum(time_limits)) + 2, _kill, (_pid, signal.SIGXCPU))
    watchdog.daemon = True
    atol = d["atol"]
    if atol != 0 or any(_is_floats(e) for e in expected):
        import numpy  # np.allclose may be needed: imported before the guard, as in EvalPlus
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    watchdog.start()  # before the guard raises the stack limit that new threads may be sized by
    _guard(d["memory_bytes"])

    # 3. The candidate: defined with its output swallowed (a failure here fails every input).
    namespace = {}
    try:
        with _swallowed():
            exec(d["candidate"], namespace)
            fn = namespace[entry_point]
    except BaseException as e:
        failed(f"{_describe(e)} (while defining {entry_point})")

    # 4. Each input: the call under its time limit, then EvalPlus's comparison (unsafe_execute).
    #    The first failing input fails the set (fast_check, EvalPlus's default).
    for i, inp in enumerate(inputs):
        args = copy.deepcopy(inp)  # the oracles below see what the candidate was given
        try:
            signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, time_limits[i])
            try:
                with _swallowed():
                    out = fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            exp = expected[i]
            exact_match = out == exp
            if dataset == "mbpp":
                if entry_point == "are_equivalent":  # Mbpp/164
                    exact_match = exact_match or True
                elif entry_point == "sum_div":  # Mbpp/295
                    exact_match = exact_match or out == 0
                elif entry_point == "surface_Area":  # Mbpp/581
                    exact_match = exact_match or abs(out - _surface_Area(*args)) <= atol
                elif entry_point == "digit_distance_nums":  # Mbpp/558
                    exact_match = exact_match or out == _digit_distance_nums(*args)
                elif entry_point in MBPP_OUTPUT_SET_EQ_TASKS:
                    exact_match = set(out) == set(exp)
                elif entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
                    exact_match = out == exp if isinstance(out, bool) else exp == (out is not None)
            if dataset == "humaneval" and entry_point == "find_zero":  # HumanEval/32
                # a root within atol passes the input (evalplus 0.3.1 forgets to count it and so
                # fails every find_zero; EvalPlus's later source counts it, as here)
                if not abs(_poly(*args, out)) <= atol:
                    failed(f"{where} {i + 1}/{len(inputs)}: not a root within atol {atol:g}")
                continue
            if atol == 0 and _is_floats(exp):
                atol = 1e-6  # EvalPlus enforces it for float outputs, for this and later inputs
            if not exact_match and atol != 0:
                if not type(out) == type(exp):
                    failed(f"{where} {i + 1}/{len(inputs)}: returned {type(out).__name__}, "
                           f"expected {type(exp).__name__}")
                if isinstance(exp, (list, tuple)) and not len(out) == len(exp):
                    failed(f"{where} {i + 1}/{len(inputs)}: wrong output (length)")
                if not numpy.allclose(out, exp, rtol=1e-07, atol=atol):
                    failed(f"{where} {i + 1}/{len(inputs)}: wrong output (beyond atol {atol:g})")
            elif not exact_match:
                failed(f"{where} {i + 1}/{len(inputs)}: wrong output")
        except _TimeLimit:
            timed_out()  # over max(1 s, 4 x the canonical's time) on this input
        except BaseException as e:
            failed(f"{where} {i + 1}/{len(inputs)}: {_describe(e)}")
    watchdog.cancel()
