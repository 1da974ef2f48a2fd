"""The executors of bundlelab.executors on one machine: "inprocess" and "processes".

Every property is checked against what a plain loop gives; the tasks are module-level
functions (the processes executor sends them by name) that leave marker files in a folder of
tmp_path, which every process sees, to count attempts and fail or die on chosen ones.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bundlelab import BundleLabError
from bundlelab.cli._executor import (
    EXECUTOR,
    EXECUTOR_NAMES,
    RAY_ADDRESS,
    THREADS,
    WORKERS,
    ExecutorName,
    executor_from_options,
)
from bundlelab.executors import (EXECUTORS, Executor, TasksFailed, executor_in_use, get_executor,
                                 torch_threads)

LOCAL = ["inprocess", "processes"]


def make(name, **options):
    options.setdefault("progress", False)
    if name == "processes":
        options.setdefault("workers", 2)
    return get_executor(name, **options)


# -- tasks (module level: they travel to other processes by name) ----------------------------


def square_later(task):
    """``value ** 2`` after ``delay`` seconds: later tasks may end first."""
    value, delay = task
    time.sleep(delay)
    return value * value


def worker_pid(task) -> int:
    return os.getpid()


def attempt(folder, name) -> int:
    """Count one more attempt of task ``name`` in ``folder``; return how many there were."""
    done = len(list(Path(folder).glob(f"{name}.attempt*")))
    Path(folder, f"{name}.attempt{done + 1}").touch()
    return done + 1


def flaky(task):
    """Fails its first ``fails`` attempts, then returns its name and attempt."""
    folder, name, fails = task
    n = attempt(folder, name)
    if n <= fails:
        raise RuntimeError(f"attempt {n} of {name} fails")
    return name, n


def dies_once(task):
    """Kills its own process on its first ``die`` attempts (as the OOM killer would)."""
    folder, name, die = task
    n = attempt(folder, name)
    if n <= die:
        os.kill(os.getpid(), signal.SIGKILL)
    return name, n, os.getpid()


def always_fails_or_finishes(task):
    """Task "bad" always raises; the others sleep a little and leave a ``.finished`` file."""
    folder, name = task
    attempt(folder, name)
    if name == "bad":
        raise ValueError("the data of 'bad' is broken\nsecond line")
    time.sleep(0.2)
    Path(folder, f"{name}.finished").touch()
    return name


def meets(task):
    """Says it started, then waits (up to a minute) until every task in ``names`` has."""
    folder, name, names = task
    Path(folder, f"{name}.started").touch()
    deadline = time.monotonic() + 60
    while not all(Path(folder, f"{n}.started").exists() for n in names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} waited a minute for the others")
        time.sleep(0.02)
    return os.getpid()


def refuses(task):
    """A user error (BundleLabError) on ``"bad"``: it says what to fix, retrying cannot help."""
    folder, name = task
    attempt(folder, name)
    if name == "bad":
        raise BundleLabError("the budget 0.5 is below the cheapest architecture (3.2); "
                             "raise it")
    return name


def reads_summary(task):
    """The summary file as this task sees it while it runs."""
    summary, name = task
    data = json.loads(Path(summary).read_text())
    mine = next(entry for entry in data["tasks"] if entry["name"] == name)
    return {"state": mine["state"], "running": data["running"], "done": data["done"]}


# -- results ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOCAL)
def test_results_come_back_in_task_order_as_a_plain_loop_gives_them(name):
    # the first task is the slowest: with two workers the later ones end first
    tasks = [(3, 0.6), (-2, 0.0), (5, 0.1), (0, 0.0), (7, 0.0)]
    with make(name) as executor:
        assert executor.map(square_later, tasks) == [square_later(t) for t in tasks]
        # the pool is kept between maps of one with block
        assert executor.map(square_later, tasks[1:3]) == [4, 25]
    assert make(name).map(square_later, []) == []


def test_inprocess_is_a_plain_loop_in_this_process():
    calls = []

    def record(task):  # a closure: nothing is pickled in process
        calls.append((task, os.getpid()))
        return -task

    executor = get_executor(progress=False)
    assert executor.name == "inprocess" and executor.in_process
    assert executor.map(record, range(4)) == [0, -1, -2, -3]
    assert calls == [(i, os.getpid()) for i in range(4)]


def test_processes_run_tasks_in_other_processes_at_once(tmp_path):
    executor = make("processes")
    assert not executor.in_process
    assert get_executor("processes", progress=False).workers == os.cpu_count()
    # each task waits for the other to start: only two workers at once can finish both
    names = ["a", "b"]
    pids = executor.map(meets, [(tmp_path, n, names) for n in names], retries=0)
    assert len(set(pids)) == 2 and os.getpid() not in pids


# -- retries and failures --------------------------------------------------------------------


@pytest.mark.parametrize("name", LOCAL)
def test_a_failing_task_is_retried_until_it_succeeds(name, tmp_path):
    tasks = [(tmp_path, "a", 0), (tmp_path, "b", 2), (tmp_path, "c", 1)]
    summary = tmp_path / "summary.json"
    with make(name) as executor:
        results = executor.map(flaky, tasks, names=["a", "b", "c"], retries=2, summary=summary)
    assert results == [("a", 1), ("b", 3), ("c", 2)]
    data = json.loads(summary.read_text())
    assert [t["attempts"] for t in data["tasks"]] == [1, 3, 2]
    assert [t["state"] for t in data["tasks"]] == ["done"] * 3
    # the last error of a task that recovered is kept: it says why it took more attempts
    assert data["tasks"][1]["last_error"] == "RuntimeError: attempt 2 of b fails"
    assert data["tasks"][0]["last_error"] is None


@pytest.mark.parametrize("name", LOCAL)
def test_a_task_failing_for_good_is_one_line_after_the_others_finished(name, tmp_path):
    names = ["bad", "b", "c", "d"]
    tasks = [(tmp_path, n) for n in names]
    summary = tmp_path / "summary.json"
    with pytest.raises(TasksFailed) as error:
        make(name).map(always_fails_or_finishes, tasks, names=names, retries=1,
                       summary=summary, what="trials")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("of 4 trials, 'bad' failed after 2 attempts (ValueError: the data "
                              "of 'bad' is broken second line); the other 3 finished; see ")
    assert str(summary) in message
    # the others finished before the error, even though "bad" ran first
    assert all((tmp_path / f"{n}.finished").exists() for n in names[1:])
    assert len(list(tmp_path.glob("bad.attempt*"))) == 2
    assert error.value.failures == {"bad": "ValueError: the data of 'bad' is broken second line"}
    assert error.value.results == [None, "b", "c", "d"]
    assert isinstance(error.value, BundleLabError)
    assert isinstance(error.value.__cause__, ValueError)
    data = json.loads(summary.read_text())
    assert (data["done"], data["failed"], data["running"], data["pending"]) == (3, 1, 0, 0)
    assert data["tasks"][0]["state"] == "failed" and data["tasks"][0]["attempts"] == 2


def test_several_failures_are_counted_and_named_in_one_line(tmp_path):
    tasks = [(tmp_path, f"t{i}", 9 if i % 2 else 0) for i in range(12)]
    with pytest.raises(TasksFailed) as error:
        make("inprocess").map(flaky, tasks, names=[t[1] for t in tasks], retries=0)
    message = str(error.value)
    assert message.startswith("6 of 12 tasks failed: 't1' failed after 1 attempt "
                              "(RuntimeError: attempt 1 of t1 fails); also 't3', 't5', 't7' "
                              "and 2 more; the other 6 finished; fix the cause and rerun")
    assert list(error.value.failures) == ["t1", "t3", "t5", "t7", "t9", "t11"]


@pytest.mark.parametrize("name", LOCAL)
def test_a_user_error_is_not_retried_and_stays_first_in_the_line(name, tmp_path):
    names = ["bad", "good"]
    with pytest.raises(TasksFailed) as error:
        make(name).map(refuses, [(tmp_path, n) for n in names], names=names, retries=2,
                       what="trials")
    assert str(error.value) == ("the budget 0.5 is below the cheapest architecture (3.2); raise "
                                "it (trials 'bad'; the other 1 finished)")
    assert len(list(tmp_path.glob("bad.attempt*"))) == 1
    assert error.value.results == [None, "good"]


def test_the_failure_of_a_nested_map_travels_back_whole():
    import pickle

    error = TasksFailed("of 2 tasks, 'a' failed", {"a": "ValueError: x"}, [None, 1])
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.failures, copy.results) == (str(error), error.failures,
                                                        error.results)


def test_capacity_is_how_many_tasks_run_at_once():
    assert make("inprocess").capacity() == 1
    assert make("processes", workers=3).capacity() == 3
    assert get_executor("processes", progress=False).capacity() == os.cpu_count()


def test_retries_zero_runs_each_task_once(tmp_path):
    with pytest.raises(TasksFailed):
        make("inprocess").map(flaky, [(tmp_path, "a", 1)], retries=0)
    assert len(list(tmp_path.glob("a.attempt*"))) == 1


def test_a_killed_worker_loses_no_other_task_and_its_task_is_retried(tmp_path):
    names = ["a", "dies", "c", "d", "e"]
    tasks = [(tmp_path, n, n == "dies") for n in names]
    summary = tmp_path / "summary.json"
    with make("processes") as executor:
        results = executor.map(dies_once, tasks, names=names, summary=summary)
    assert [(r[0], r[1]) for r in results] == [("a", 1), ("dies", 2), ("c", 1), ("d", 1),
                                               ("e", 1)]
    data = json.loads(summary.read_text())
    assert [t["attempts"] for t in data["tasks"]] == [1, 2, 1, 1, 1]
    assert "worker process died" in data["tasks"][1]["last_error"]
    assert data["done"] == 5


def test_a_worker_dying_every_time_fails_its_task_only(tmp_path):
    names = ["a", "dies", "c"]
    tasks = [(tmp_path, "a", 0), (tmp_path, "dies", 9), (tmp_path, "c", 0)]
    with pytest.raises(TasksFailed) as error:
        make("processes").map(dies_once, tasks, names=names, retries=1)
    assert str(error.value).startswith("of 3 tasks, 'dies' failed after 2 attempts (WorkerDied: "
                                       "its worker process died")
    assert [r if r is None else r[:2] for r in error.value.results] == [("a", 1), None, ("c", 1)]


DRIVER = """
import os, sys, time
from bundlelab.executors import get_executor

def sleeper(task):
    open(os.path.join(sys.argv[1], f"worker-{task}"), "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    get_executor("processes", workers=2, progress=False).map(sleeper, [0, 1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_the_command_is_killed_mid_task(tmp_path):
    import subprocess

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("worker-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [int(p.read_text()) for p in tmp_path.glob("worker-*")]
    driver.kill()
    driver.wait()
    assert len(pids) == 2
    # else they would train on for minutes, holding their run folders' locks
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][:1] not in "ZX"  # a zombie is dead
    except FileNotFoundError:
        return False


def test_ctrl_c_stops_the_map_at_once_without_retrying(tmp_path):
    calls = []
    summary = tmp_path / "summary.json"

    def interrupted(task):
        calls.append(task)
        if task == 1:
            raise KeyboardInterrupt
        return task

    with pytest.raises(KeyboardInterrupt):
        make("inprocess").map(interrupted, range(4), retries=3, summary=summary)
    assert calls == [0, 1]
    data = json.loads(summary.read_text())
    assert [t["state"] for t in data["tasks"]] == ["done", "interrupted", "pending", "pending"]


# -- the summary file and the progress ---------------------------------------------------------


@pytest.mark.parametrize("name", LOCAL)
def test_the_summary_is_rewritten_at_every_change(name, tmp_path):
    summary = tmp_path / "progress" / "summary.json"  # its folder is made
    names = ["a", "b", "c"]
    with make(name, workers=1) if name == "processes" else make(name) as executor:
        seen = executor.map(reads_summary, [(summary, n) for n in names], names=names,
                            summary=summary, what="trials")
    # each task saw itself running and the tasks before it done
    assert seen == [{"state": "running", "running": 1, "done": i} for i in range(3)]
    data = json.loads(summary.read_text())
    assert data["format"] == "bundlelab.tasks/1" and data["what"] == "trials"
    assert {k: data[k] for k in ("total", "done", "running", "failed", "pending")} == {
        "total": 3, "done": 3, "running": 0, "failed": 0, "pending": 0}
    assert [t["name"] for t in data["tasks"]] == names
    assert all(t["seconds"] >= 0 and t["attempts"] == 1 for t in data["tasks"])
    assert sorted(os.listdir(summary.parent)) == ["summary.json"]  # no temporary file left


def test_the_summary_records_the_seconds_of_each_task(tmp_path):
    summary = tmp_path / "summary.json"
    make("inprocess").map(square_later, [(1, 0.3), (2, 0.0)], summary=summary)
    seconds = [t["seconds"] for t in json.loads(summary.read_text())["tasks"]]
    assert seconds[0] >= 0.3 and seconds[1] < 0.3


def test_progress_lines_in_process_and_silence_without_progress(tmp_path, capsys):
    make("inprocess").map(flaky, [(tmp_path, "a", 1), (tmp_path, "b", 0)], names=["a", "b"])
    assert capsys.readouterr().err == ""
    make("inprocess", progress=True).map(flaky, [(tmp_path, "x", 1), (tmp_path, "y", 0)],
                                         names=["x", "y\x1b[2J"], what="trials")
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "bundlelab: trials: 'x' failed (RuntimeError: attempt 1 of x fails); retry 1 of 2",
        "bundlelab: trials: 1 of 2 done",
        "bundlelab: trials: 2 of 2 done",
    ]


def test_progress_beside_workers_notes_the_retries(tmp_path, capsys):
    make("processes", progress=True).map(flaky, [(tmp_path, "x", 1)], names=["x\x1b[2J"],
                                         what="trials")
    err = " ".join(capsys.readouterr().err.split())
    assert "trials: 'x\\x1b[2J' failed (RuntimeError: attempt 1 of x fails); retry 1 of 2" in err
    assert "\x1b[2J" not in err


# -- choosing an executor ----------------------------------------------------------------------


def test_a_callers_executor_stays_open_and_one_made_here_is_closed():
    with make("processes", workers=1) as executor:  # the caller keeps its workers warm
        with executor_in_use(executor) as running:
            assert running is executor
            first = running.map(worker_pid, [0])
        # still open: the same warm worker takes the caller's next tasks
        with executor_in_use(executor) as running:
            assert running.map(worker_pid, [0]) == first
    with executor_in_use("processes", workers=1, progress=False) as made:
        made.map(worker_pid, [0])
        assert any(pool is not None for pool in made._pools)
    assert made._pools == []  # closed on leaving the block: no worker is left behind


def test_an_executor_is_passed_through_and_the_names_are_the_clis():
    executor = make("processes")
    assert get_executor(executor) is executor
    assert tuple(EXECUTORS) == EXECUTOR_NAMES
    with pytest.raises(BundleLabError, match="got an Executor and workers: set those when"):
        get_executor(executor, workers=2)


@pytest.mark.parametrize("call, fragment", [
    (lambda: get_executor("threads"), "The 'executor' parameter must be one of 'inprocess', "
     "'processes', 'ray' or an Executor. Got 'threads' instead."),
    (lambda: get_executor(["ray"]), "Got ['ray'] instead."),
    (lambda: get_executor("processes", workers=0), "The 'workers' parameter must be an int in "
     "[1, inf). Got 0 instead."),
    (lambda: get_executor("inprocess", workers=2), "must be 1 (or None) for the inprocess"),
    (lambda: get_executor("processes", address="auto"), "The 'address' parameter is for the ray "
     "executor"),
    (lambda: get_executor("processes", resources={"num_gpus": -1}), "The 'resources' parameter "
     "must be a dict of resource name to amount >= 0"),
    (lambda: get_executor("processes", resources=["num_cpus"]), "The 'resources' parameter"),
    (lambda: get_executor("processes", progress="yes"), "The 'progress' parameter must be a "
     "bool"),
    (lambda: get_executor(executors="ray"), "unexpected keyword argument 'executors'; did you "
     "mean 'executor'?"),
    (lambda: make("inprocess").map(abs, [1], retries=-1), "The 'retries' parameter must be an "
     "int in [0, inf)"),
    (lambda: make("inprocess").map(abs, [1, 2], names=["a"]), "one per task (2). Got 1 names"),
    (lambda: make("inprocess").map(abs, [1], names=[1]), "one of them 1 instead"),
    (lambda: make("inprocess").map(abs, 5), "The 'tasks' parameter must be a list of tasks"),
    (lambda: make("inprocess").map("abs", [1]), "The 'fn' parameter must be a function"),
    (lambda: make("inprocess").map(abs, [1], what=""), "The 'what' parameter"),
    (lambda: make("processes").map(lambda task: task, [1]), "The 'fn' parameter must be a "
     "top-level function of an importable module: the processes executor sends it"),
    (lambda: make("processes").map(square_later, [(1, 0), (lambda: 0, 0)], names=["a", "b"]),
     "task 'b' cannot be sent to another process"),
])
def test_bad_options_are_one_line_errors(call, fragment):
    with pytest.raises(BundleLabError) as error:
        call()
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_ray_missing_is_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ImportError) as error:
        get_executor("ray")
    assert str(error.value) == "--executor ray needs Ray: pip install 'bundlelab[ray]'"
    assert isinstance(error.value, BundleLabError)
    with pytest.raises(BundleLabError, match=r"^--executor ray needs Ray: pip install"):
        executor_from_options(ExecutorName("ray"), None, "auto")
    # the other executors never import Ray
    assert make("processes").map(square_later, [(2, 0)]) == [4]


def test_a_ray_cluster_that_cannot_be_joined_is_one_line(monkeypatch):
    import types

    def init(address=None, **options):
        raise ConnectionError("Could not find any running Ray instance.\nPlease start one.")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(BundleLabError) as error:
        get_executor("ray", address="auto", progress=False).map(abs, [1])
    assert str(error.value) == (
        "cannot join the Ray cluster at 'auto' (Could not find any running Ray instance. Please "
        "start one.); start one with `ray start --head` or check the address")


def test_importing_the_executors_imports_no_ray_or_torch():
    import subprocess

    code = ("import sys, bundlelab.executors, bundlelab.cli._executor;"
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# -- the command-line options ------------------------------------------------------------------


def _cli():
    app = typer.Typer()

    @app.command()
    def sweep(executor: ExecutorName = EXECUTOR, workers: int = WORKERS,
              ray_address: str = RAY_ADDRESS, threads: int = THREADS) -> None:
        try:
            chosen = executor_from_options(executor, workers, ray_address, progress=False)
        except BundleLabError as exc:
            typer.echo(f"error: {exc}")
            raise typer.Exit(2)
        typer.echo(f"{chosen.name} {chosen.workers}")

    return app


@pytest.mark.parametrize("args, out", [
    ([], "inprocess None"),
    (["--executor", "processes", "--workers", "3"], "processes 3"),
    (["--executor", "inprocess", "--workers", "2"], "error: The '--workers' option must be 1 "
     "(or None) for the inprocess executor"),
    (["--ray-address", "auto"], "error: --ray-address joins a Ray cluster, which needs "
     "--executor ray (got --executor inprocess); add --executor ray or drop --ray-address"),
])
def test_the_shared_options_choose_the_executor(args, out):
    result = CliRunner().invoke(_cli(), args)
    assert result.output.startswith(out), result.output


def test_the_shared_options_have_help_and_choices():
    result = CliRunner().invoke(_cli(), ["--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    text = " ".join(result.output.split())
    for fragment in ("--executor", "inprocess", "processes", "ray", "--workers", "Tasks at once",
                     "--ray-address", "auto (the one started on this machine with `ray start`)",
                     "--threads", "torch's intra-op threads in each trial"):
        assert fragment in text
    assert CliRunner().invoke(_cli(), ["--executor", "threads"]).exit_code == 2
    assert CliRunner().invoke(_cli(), ["--workers", "0"]).exit_code == 2
    assert CliRunner().invoke(_cli(), ["--threads", "0"]).exit_code == 2


# -- threads ---------------------------------------------------------------------------------


def test_torch_threads_are_set_for_the_block_and_restored():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(BundleLabError, match="The 'threads' parameter"):
        with torch_threads(0):
            pass


def test_an_executor_subclass_needs_its_hooks():
    class Half(Executor):
        name = "half"

    with pytest.raises(NotImplementedError):
        Half(progress=False).map(abs, [1])


def test_the_docstring_example_runs():
    import doctest

    import bundlelab.executors

    result = doctest.testmod(bundlelab.executors)
    assert result.failed == 0 and result.attempted > 0
