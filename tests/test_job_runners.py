"""tools/run_local.sh and tools/run_slurm.sh (Kaldi run.pl-style job runners). run_slurm.sh runs
against a fake sbatch that runs the array tasks one after another on this machine and records the
flags it was given, so the tests need no SLURM cluster."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNERS = {"local": REPO / "tools" / "run_local.sh", "slurm": REPO / "tools" / "run_slurm.sh"}

# Stands in for sbatch: checks --wait, runs tasks a..b of --array=a-b[%K] with SLURM_ARRAY_TASK_ID
# set and their output in --output (%a = task id), appends its arguments (JSON) to $FAKE_SBATCH_ARGS,
# and skips the tasks listed in $FAKE_SBATCH_SKIP (as if SLURM had killed them).
FAKE_SBATCH = """\
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_SBATCH_ARGS"], "a") as f:
    f.write(json.dumps(args) + "\\n")
flags = dict(a.partition("=")[::2] for a in args if a.startswith("--"))
script = [a for a in args if not a.startswith("--")][0]
if "--wait" not in flags:
    sys.exit("fake sbatch: expected --wait")
first, last = map(int, flags["--array"].split("%")[0].split("-"))
skip = os.environ.get("FAKE_SBATCH_SKIP", "").split()
print("Submitted batch job 42", flush=True)
failed = False
for i in range(first, last + 1):
    if str(i) in skip:
        continue
    with open(flags["--output"].replace("%a", str(i)), "w") as out:
        env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(i))
        failed |= subprocess.run(["bash", script], env=env, stdout=out, stderr=out).returncode != 0
sys.exit(1 if failed else 0)
"""


def path_without_sbatch():
    """$PATH minus any directory holding a real sbatch."""
    dirs = os.environ["PATH"].split(os.pathsep)
    return os.pathsep.join(d for d in dirs if not os.access(os.path.join(d, "sbatch"), os.X_OK))


@pytest.fixture
def fake_sbatch(tmp_path):
    """Directory with the fake sbatch, and the file where it records its arguments."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    sbatch = bindir / "sbatch"
    sbatch.write_text(f"#!{sys.executable}\n{FAKE_SBATCH}")
    sbatch.chmod(0o755)
    return bindir, tmp_path / "sbatch_args.jsonl"


def make_runner(script, cwd, bindir=None, argsfile=None):
    def run(*args, env=None):
        e = dict(os.environ, PATH=path_without_sbatch())
        if bindir is not None:
            e.update(PATH=f"{bindir}{os.pathsep}{e['PATH']}", FAKE_SBATCH_ARGS=str(argsfile))
        e.update(env or {})
        return subprocess.run(["bash", str(script), *map(str, args)], cwd=cwd, env=e,
                              capture_output=True, text=True, timeout=120)
    return run


@pytest.fixture(params=sorted(RUNNERS))
def run(request, tmp_path, fake_sbatch):
    """Runs one of the two runners (the test runs for both) in tmp_path."""
    return make_runner(RUNNERS[request.param], tmp_path, *fake_sbatch)


@pytest.fixture
def run_local(tmp_path):
    return make_runner(RUNNERS["local"], tmp_path)


@pytest.fixture
def run_slurm(tmp_path, fake_sbatch):
    return make_runner(RUNNERS["slurm"], tmp_path, *fake_sbatch)


def sbatch_calls(fake_sbatch):
    argsfile = fake_sbatch[1]
    return [json.loads(line) for line in argsfile.read_text().splitlines()] if argsfile.exists() else []


def write_script(path, text):
    path.write_text(text)
    return path


# ---- both runners --------------------------------------------------------------------------------

def test_job_substituted_in_log_name_and_command(run, tmp_path):
    r = run("JOB=1:3", "exp/log/echo.JOB.log", "echo", "job", "JOB", ">", "out.JOB.txt")
    assert r.returncode == 0, r.stderr
    for i in (1, 2, 3):
        assert (tmp_path / f"out.{i}.txt").read_text() == f"job {i}\n"
        assert f"# echo job {i} > out.{i}.txt" in (tmp_path / f"exp/log/echo.{i}.log").read_text()
    assert not (tmp_path / "exp/log/echo.JOB.log").exists()


def test_other_variable_name_and_range(run, tmp_path):
    r = run("TASK=2:3", "log/t.TASK.log", "echo", "task=TASK", "JOB")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "log").glob("t.*.log")) == ["t.2.log", "t.3.log"]
    assert "task=3 JOB\n" in (tmp_path / "log/t.3.log").read_text()  # only TASK is replaced


def test_without_range_runs_once(run, tmp_path):
    r = run("exp/single.log", "echo", "once", ">>", "count.txt")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "count.txt").read_text() == "once\n"
    assert "\nonce\n" not in (tmp_path / "exp/single.log").read_text()  # went to count.txt


def test_log_format(run, tmp_path):
    r = run("JOB=1:1", "deep/er/log/hello.JOB.log", "echo", "hello", ";", "echo", "err", "1>&2")
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "deep/er/log/hello.1.log").read_text().splitlines()
    assert lines[0] == "# echo hello ; echo err 1>&2"
    assert lines[1].startswith("# Started at ")
    assert lines[2:4] == ["hello", "err"]  # stdout and stderr both in the log
    assert lines[4].startswith("# Accounting: time=") and lines[4].endswith(" threads=1")
    assert lines[5].startswith("# Ended (code 0) at ") and lines[5].endswith(" seconds")
    assert len(lines) == 6


def test_failure_reports_count_and_tail_of_first_failed_log(run, tmp_path):
    # job 2 prints 30 lines and fails with code 3; job 3 fails too; job 1 succeeds
    job = write_script(tmp_path / "job.sh",
                       'for k in $(seq 30); do echo "job $1 line $k"; done; [ "$1" = 1 ] || exit 3\n')
    r = run("JOB=1:3", "exp/log/fail.JOB.log", "bash", job, "JOB")
    assert r.returncode == 1
    assert "2 / 3 failed, log is in exp/log/fail.*.log" in r.stderr
    assert "exp/log/fail.2.log" in r.stderr
    assert "job 2 line 30" in r.stderr and "# Ended (code 3)" in r.stderr
    assert "job 2 line 5\n" not in r.stderr  # only the tail (20 lines)
    assert "job 3 line" not in r.stderr  # only the first failed job's log
    assert "# Ended (code 0)" in (tmp_path / "exp/log/fail.1.log").read_text()
    assert "# Ended (code 3)" in (tmp_path / "exp/log/fail.3.log").read_text()


def test_escaped_pipe_is_a_pipe_with_pipefail(run, tmp_path):
    r = run("JOB=1:2", "log/p.JOB.log", "echo", "abc JOB", "|", "tr", "a-z", "A-Z")
    assert r.returncode == 0, r.stderr
    assert "\nABC 2\n" in (tmp_path / "log/p.2.log").read_text()
    # pipefail: a failure on the left of the pipe is the job's failure
    r = run("log/pf.log", "false", "|", "cat")
    assert r.returncode == 1 and "1 / 1 failed, log is in log/pf.log" in r.stderr


def test_arguments_with_whitespace_are_quoted(run, tmp_path):
    # an argument with whitespace reaches the command as one argument, whatever it holds;
    # JOB is replaced in it too
    show_args = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]
    args = ["two  spaces JOB", "it's here", 'say "hi" $HOME `x` \\|', "", "tab\there", "new\nline"]
    r = run("JOB=1:2", "log/s.JOB.log", *show_args, *args, ">", "args.JOB.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "args.2.json").read_text()) == ["two  spaces 2", *args[1:]]


def test_queue_options_accepted(run, tmp_path):
    r = run("--mem", "4G", "--num-threads", "2", "--gpu", "1", "--time=1:00:00",
            "--config", "conf/queue.conf", "--max-jobs-run", "2", "JOB=1:2", "log/o.JOB.log", "true")
    assert r.returncode == 0, r.stderr
    assert "# Ended (code 0)" in (tmp_path / "log/o.2.log").read_text()


@pytest.mark.parametrize("spec", ["JOB=3:1", "JOB=a:3", "JOB=1-4", "JOB=1:", "JOB=:2"])
def test_bad_range(run, tmp_path, spec):
    r = run(spec, "log/x.JOB.log", "touch", "ran")
    assert r.returncode != 0
    assert f"bad job range '{spec}'" in r.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "log").exists()


@pytest.mark.parametrize("args, message", [
    (["--foo", "1", "JOB=1:2", "log/x.JOB.log", "touch", "ran"], "unknown option --foo"),
    (["--max-jobs-run", "0", "JOB=1:2", "log/x.JOB.log", "touch", "ran"],
     "--max-jobs-run must be a positive integer"),
    (["--mem"], "option --mem needs a value"),
    (["JOB=1:2", "log/same.log", "touch", "ran"], "does not contain JOB"),
    (["log/only.log"], "usage:"),
])
def test_bad_arguments(run, tmp_path, args, message):
    r = run(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert not (tmp_path / "ran").exists()


# ---- run_local.sh --------------------------------------------------------------------------------

def test_jobs_run_in_parallel(run_local, tmp_path):
    # each job waits (up to 60 s) for the other's marker: both succeed only if they run at once
    job = write_script(tmp_path / "meet.sh", 'touch "m.$1"\n'
                       'for _ in $(seq 600); do [ -e "m.$((3 - $1))" ] && exit 0; sleep 0.1; done\n'
                       'echo "job $1: the other job never started"; exit 1\n')
    r = run_local("--max-jobs-run", "2", "JOB=1:2", "log/meet.JOB.log", "bash", job, "JOB")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("limit, num_jobs", [(1, 3), (2, 5)])
def test_max_jobs_run_is_a_limit(run_local, tmp_path, limit, num_jobs):
    # each job notes how many jobs (itself included) are running while it runs
    job = write_script(tmp_path / "count.sh", 'touch "running.$1"; sleep 0.3\n'
                       'ls running.* | wc -l > "seen.$1"; rm "running.$1"\n')
    r = run_local("--max-jobs-run", limit, f"JOB=1:{num_jobs}", "log/c.JOB.log", "bash", job, "JOB")
    assert r.returncode == 0, r.stderr
    seen = [int((tmp_path / f"seen.{i}").read_text()) for i in range(1, num_jobs + 1)]
    assert max(seen) <= limit


# ---- run_slurm.sh --------------------------------------------------------------------------------

def test_slurm_submits_one_array_job_with_mapped_flags(run_slurm, tmp_path, fake_sbatch):
    r = run_slurm("--mem", "4G", "--num-threads", "2", "--gpu", "1", "--time", "2:00:00",
                  "--max-jobs-run", "2", "JOB=1:3", "exp/log/train.JOB.log", "echo", "JOB",
                  env={"KDTOOL_SBATCH_OPTS": "--partition=debug --qos=high"})
    assert r.returncode == 0, r.stderr
    calls = sbatch_calls(fake_sbatch)
    assert len(calls) == 1
    args = calls[0]
    for flag in ["--wait", "--array=1-3%2", "--mem=4G", "--cpus-per-task=2", "--gres=gpu:1",
                 "--time=2:00:00", "--partition=debug", "--qos=high", "--job-name=train",
                 "--output=exp/log/q/train.%a.out"]:
        assert flag in args
    assert args[-1] == "exp/log/q/train.sh"
    for i in (1, 2, 3):
        log = (tmp_path / f"exp/log/train.{i}.log").read_text()
        assert f"\n{i}\n" in log and "threads=2\n# Ended (code 0)" in log
        assert (tmp_path / f"exp/log/q/train.done.{i}").read_text() == "0\n"


def test_slurm_defaults_add_no_resource_flags(run_slurm, fake_sbatch):
    r = run_slurm("--gpu", "0", "JOB=2:4", "log/a.JOB.log", "true")
    assert r.returncode == 0, r.stderr
    (args,) = sbatch_calls(fake_sbatch)
    assert "--array=2-4" in args
    assert not [a for a in args if a.split("=")[0] in ("--mem", "--cpus-per-task", "--gres", "--time")]


def test_slurm_job_killed_without_exit_code_is_a_failure(run_slurm, tmp_path):
    # a stale exit code from an earlier run must not hide that task 2 never ran this time
    (tmp_path / "log/q").mkdir(parents=True)
    (tmp_path / "log/q/k.done.2").write_text("0\n")
    r = run_slurm("JOB=1:3", "log/k.JOB.log", "true", env={"FAKE_SBATCH_SKIP": "2"})
    assert r.returncode == 1
    assert "1 / 3 failed, log is in log/k.*.log" in r.stderr
    assert "job 2 left no exit code" in r.stderr and "log/q/k.2.out" in r.stderr


def test_slurm_without_sbatch(tmp_path):
    r = make_runner(RUNNERS["slurm"], tmp_path)("JOB=1:2", "log/x.JOB.log", "touch", "ran")
    assert r.returncode == 1
    assert "sbatch not found on PATH" in r.stderr
    assert not (tmp_path / "ran").exists()
