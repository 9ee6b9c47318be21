"""The program that checks one completion of an EvoEval task with evoeval 0.1.0's rules
(evaluate.get_groundtruth with EvalPlus's trusted_exec, eval_test.unsafe_execute and
untrusted_check with evaluate's defaults: fast check, min_time_limit 1 s, gt_time_limit_factor 4).
evoeval.py appends this source to _plus_harness.py's (whose guard, output swallowing and time-limit
helpers EvoEval shares with EvalPlus), then `_check_evo(<data>)`; it is never imported.
"""
import math
import signal
import threading

if False:  # defined by _plus_harness.py, whose source comes first in the program
    from ._plus_harness import (_TimeLimit, _describe, _expected_outputs, _guard, _kill, _on_alarm, _pid,
                                _swallowed, failed, timed_out)

# ---- evoeval's special oracles (eval_test/_*_special_oracle.py), restated ----

def _evo_poly(xs, x):
    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])


def _check_insensitive_palindrome(check_palindrome, string, gt_palindrome):  # difficult, EvoEval/10
    assert len(check_palindrome) == len(gt_palindrome)
    assert check_palindrome.startswith(string)
    assert check_palindrome.lower() == check_palindrome[::-1].lower()


def _check_difficult_poly(xs, interval, solution, gt_solution):  # difficult, EvoEval/32
    if gt_solution is None:
        assert solution is None
        return
    start, end = interval
    assert start <= solution <= end
    assert abs(_evo_poly(xs, solution)) <= 2e-2


def _check_maze(maze, start, end, solution_path, gt_path):  # creative, EvoEval/26
    if not gt_path:
        assert solution_path == []
    else:
        moves = {"right": (0, 1), "left": (0, -1), "up": (-1, 0), "down": (1, 0)}
        current = start
        for move in solution_path:
            current = (current[0] + moves[move][0], current[1] + moves[move][1])
            assert maze[current[0]][current[1]] != 1
        assert current == end


def _check_path(maze, start, end, solution_path, gt_path):  # creative, EvoEval/30
    if not gt_path:
        assert solution_path == []
    else:
        assert solution_path[0] == start
        assert solution_path[-1] == end
        assert maze[start[0]][start[0]] != 0
        for i in range(1, len(solution_path)):
            prev_x, prev_y = solution_path[i - 1]
            curr_x, curr_y = solution_path[i]
            assert maze[curr_x][curr_y] != 0
            assert abs(curr_x - prev_x) + abs(curr_y - prev_y) == 1


def _check_product(arr, target, solution, gt):  # creative, EvoEval/69
    if gt == "No magic today":
        assert gt == solution
    else:
        assert isinstance(solution, tuple)
        i, j = solution
        assert 0 <= i < j < len(arr)
        assert arr[i] * arr[j] == target


def _check_subtle_poly(xs, solution):  # subtle, EvoEval/32
    full_xs = [xs[0], xs[1]]
    for i in range(2, len(xs)):
        full_xs.extend([0, xs[i]])
    assert abs(_evo_poly(full_xs, solution)) <= 1e-6


# ---- evoeval's is_equal: types must match; floats (and lists of them) within atol 1e-6 ----

def _evo_is_floats(x):
    import numpy as np
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)  # an empty list or tuple counts, as in evoeval
    if isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def _evo_type(x):
    if x is None:
        return "null"
    for kind, types in (("bool", bool), ("int", int), ("str", str)):
        if isinstance(x, types):
            return kind
    if _evo_is_floats(x):
        return "float"
    for kind, types in (("tuple", tuple), ("list", list), ("dict", dict), ("set", set), ("type", type)):
        if isinstance(x, types):
            return kind
    return "unknown"


def _evo_is_equal(x, y):
    import numpy as np
    kind = _evo_type(x)
    if kind != _evo_type(y):
        return False
    if kind in ("int", "bool", "null", "str", "set", "type"):
        return x == y
    if kind == "float":
        return bool(np.allclose(x, y, equal_nan=True, atol=1e-6))
    if kind in ("list", "tuple"):
        return len(x) == len(y) and all(_evo_is_equal(a, b) for a, b in zip(x, y))
    if kind == "dict":
        return len(x) == len(y) and all(k in y and _evo_is_equal(v, y[k]) for k, v in x.items())
    try:
        return bool(x == y)
    except BaseException:
        return False


def _evo_oracle(dataset, task_id, inp, out, exp):
    if (dataset == "humaneval" or "verbose" in dataset or "concise" in dataset) and task_id == "HumanEval/32":
        assert abs(_evo_poly(*out, inp)) <= 1e-6  # as evoeval writes it
    elif "difficult" in dataset and task_id == "EvoEval/10":
        _check_insensitive_palindrome(out, *inp, exp)
    elif "difficult" in dataset and task_id == "EvoEval/32":
        _check_difficult_poly(*inp, out, exp)
    elif "creative" in dataset and task_id == "EvoEval/26":
        _check_maze(*inp, out, exp)
    elif "creative" in dataset and task_id == "EvoEval/30":
        _check_path(*inp, out, exp)
    elif "creative" in dataset and task_id == "EvoEval/69":
        _check_product(*inp, out, exp)
    elif "subtle" in dataset and task_id == "EvoEval/32":
        _check_subtle_poly(*inp, out)
    else:
        assert _evo_is_equal(exp, out)


def _check_evo(d):
    __import__("numpy")  # evoeval's checker has it loaded before the guard
    dataset, task_id, entry_point = d["dataset"], d["task_id"], d["entry_point"]
    import pickle
    inputs = pickle.loads(d["inputs"])

    # 1. Expected outputs: the canonical solution on a deep copy of each input, timed
    expected, ref_time = _expected_outputs(d["reference"], entry_point, inputs, d["reference_limit_s"],
                                           "inputs")

    # 2. evoeval's limits: each input max(1 s, 4 x the canonical's time), the whole check
    #    min(60 s, their sum) + 1 s, after which untrusted_check's parent waits 1 s more
    time_limits = [max(1.0, 4.0 * t) for t in ref_time]
    watchdog = threading.Timer(min(60, sum(time_limits)) + 2, _kill, (_pid, signal.SIGXCPU))
    watchdog.daemon = True
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    watchdog.start()
    _guard(d["memory_bytes"])  # evoeval's unsafe_execute: 4 GB, --memory-gib's default

    # 3. The candidate, then each input as given (evoeval does not copy it), output swallowed;
    #    the first failing input fails the task (fast check)
    with _swallowed():
        namespace = {}
        try:
            exec(d["candidate"], namespace)
            fn = namespace[entry_point]
        except BaseException as e:
            failed(f"{_describe(e)} (while defining {entry_point})")
        for i, inp in enumerate(inputs):
            where = f"input {i + 1}/{len(inputs)}"
            try:
                signal.signal(signal.SIGALRM, _on_alarm)
                signal.setitimer(signal.ITIMER_REAL, time_limits[i])
                try:
                    out = fn(*inp)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _TimeLimit:
                timed_out()
            except BaseException as e:
                failed(f"{where}: {_describe(e)}")
            try:
                _evo_oracle(dataset, task_id, inp, out, expected[i])
            except AssertionError:
                failed(f"{where}: wrong output")
            except BaseException as e:  # an output the comparison cannot take
                failed(f"{where}: wrong output ({_describe(e)})")
    watchdog.cancel()
