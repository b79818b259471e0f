"""Bad input to the command lines: one line that names the fix, exit code 2, no traceback,
the out dir unchanged; one writer per out dir; divergence stopped; Ctrl-C resumable."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jaxal.apps.rundir import LOCK_NAME, lock_out_dir
from jaxal.errors import DivergedError, RunDirError

MOONS = ["--dataset", "moons", "--rounds", "3", "--query-size", "5", "--init-per-class",
         "2", "--pool-size", "200", "--val-size", "50", "--steps", "30", "--batch-size", "8"]


def tree_digest(path: Path) -> str:
    """A hash of every file name and content under ``path`` ('' where it does not exist)."""
    if not path.exists():
        return ""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def run_cli(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_refused(proc: subprocess.CompletedProcess, fix: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert fix in lines[0], lines[0]


def run_in_process(argv: list[str], capfd) -> subprocess.CompletedProcess:
    """``python -m jaxal.run *argv`` run in this process, as ``run_cli`` reports it: its
    exit code and what it wrote to stdout and stderr (``capfd``: also what C code writes).
    No second JAX start-up: for refusals and runs after JAX is imported (one command per
    kind stays a real process: ``finished_run``, the refusals before JAX, the locks)."""
    from jaxal.cli.run import main

    capfd.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """An out dir holding a finished moons run (its hash must survive every refusal)."""
    out = tmp_path_factory.mktemp("done") / "run"
    proc = run_cli("jaxal.run", *MOONS, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


# Refusals decided from the arguments alone: before JAX is imported.
FAST = [
    (["--seed", "-1"], "argument --seed: expected a whole number from 0 to 4294967295"),
    (["--seed", str(2**63)], "argument --seed: expected a whole number"),
    (["--seed", "1.5"], "argument --seed"),
    (["--lr", "inf"], "argument --lr: expected a finite number > 0"),
    (["--lr", "nan"], "argument --lr: expected a finite number > 0"),
    (["--lr", "0"], "argument --lr: expected a finite number > 0"),
    (["--prior-precision", "inf"], "argument --prior-precision: expected a finite number"),
    (["--prior-precision", "-1"], "argument --prior-precision"),
    (["--stochastic-beta", "inf"], "argument --stochastic-beta: expected a finite number"),
    (["--stochastic-beta", "1e400"], "argument --stochastic-beta: expected a finite number"),
    (["--hybrid-beta", "2"], "argument --hybrid-beta: expected a finite number >= 0 and <= 1"),
    (["--query-size", "0"], "argument --query-size: expected a whole number >= 1"),
    (["--steps", "-5"], "argument --steps: expected a whole number >= 1"),
    (["--epochs", "0"], "argument --epochs: expected a finite number > 0"),
    (["--epochs", "inf"], "argument --epochs: expected a finite number > 0"),
    (["--epochs", "3"], "--steps 30 and --epochs 3 both set how long a fit trains"),
    (["--min-steps", "0"], "argument --min-steps: expected a whole number >= 1"),
    (["--pool-size", "0"], "argument --pool-size"),
    (["--samples", "3_0"], "argument --samples"),
    (["--acq", "bold"], "argument --acq: invalid choice: 'bold' (choose from random"),
    (["--posterior", "gp"], "argument --posterior: invalid choice"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, fix", FAST, ids=[" ".join(a) for a, _ in FAST])
# The finished out dir is a run of its own (a subprocess): the full run only.
@pytest.mark.parametrize("fresh", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["new-out", "finished-out"])
def test_bad_argument_refused_in_one_line_before_jax(args, fix, fresh, finished_run,
                                                     tmp_path):
    out = tmp_path / "out" if fresh else finished_run
    before = tree_digest(out)
    code = ("import sys, runpy\n"
            "sys.argv = ['jaxal.run', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('jaxal.run', run_name='__main__')\n"
            "finally:\n    print('JAX_IMPORTED' if 'jax' in sys.modules else 'NO_JAX')\n")
    proc = subprocess.run([sys.executable, "-c", code, *MOONS, "--out", str(out), *args],
                          capture_output=True, text=True, timeout=120)
    assert_refused(proc, fix)
    if "invalid choice" not in fix:   # choices come from the registries, after the checks
        assert proc.stdout.strip() == "NO_JAX"
    assert tree_digest(out) == before, "a refused command changed (or created) its out dir"


DAMAGED = [
    ("config.json", b"{not json", "config.json is unreadable"),
    ("config.json", b"", "config.json is empty"),
    ("config.json", b'{"experiment": 3}', "is not a jaxal run config"),
    ("checkpoint.npz", b"", "checkpoint.npz is empty; delete"),
    ("checkpoint.npz", b"PK\x03\x04 truncated", "checkpoint.npz is damaged or not a jaxal"),
    ("checkpoint.pkl", b"\x80\x04crafted", "as a pickle, which is never read"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, content, fix", DAMAGED,
                         ids=[f"{n}={c[:8]!r}" for n, c, _ in DAMAGED])
def test_damaged_run_dir_file_is_named_and_left_as_it_is(name, content, fix, finished_run,
                                                         tmp_path, capfd):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / name).write_bytes(content)
    before = tree_digest(out)
    assert_refused(run_in_process([*MOONS, "--out", str(out)], capfd), fix)
    assert tree_digest(out) == before


def test_out_dir_that_is_a_file_or_under_one_is_refused(tmp_path, capfd):
    f = tmp_path / "a_file"
    f.write_text("x")
    for out, fix in [(f, "a_file is a file; choose another --out"),
                     (f / "sub", "a_file is a file; choose another --out")]:
        assert_refused(run_in_process([*MOONS, "--out", str(out)], capfd), fix)
    assert f.read_text() == "x"


def test_unwritable_out_dir_is_refused(capfd):
    # As root no permission bit stops a write; /proc refuses new directories to anyone.
    assert_refused(run_in_process([*MOONS, "--out", "/proc/jaxal-test-out"], capfd),
                   "choose a writable --out")


# Refusals that need the data or the registries, each leaving a finished run untouched.
SLOW = [
    (["--posterior", "laplace", "--prior-precision", "0"], "prior precision > 0"),
    (["--init-per-class", "150"], "lower --init-per-class"),
    (["--min-steps", "50", "--max-steps", "10"],
     "max steps (10) must be >= min steps (50); raise --max-steps or lower --min-steps"),
    (["--posterior", "ensemble", "--ensemble-size", "1"], "--ensemble-size >= 2"),
    (["--predictive", "glm"], "use --posterior laplace"),
    (["--pool-subset", "3"], "--pool-subset must be at least the query size"),
    (["--posterior", "mc-dropout", "--dropout", "0"], "use --dropout 0.5"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, fix", SLOW, ids=[" ".join(a) for a, _ in SLOW])
def test_bad_value_leaves_a_finished_out_dir_unchanged(args, fix, finished_run, capfd):
    before = tree_digest(finished_run)
    assert_refused(run_in_process([*MOONS, *args, "--out", str(finished_run)], capfd), fix)
    assert tree_digest(finished_run) == before
    assert not (finished_run / LOCK_NAME).exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, fix", [
    (["--pool-size", "70000"], "--pool-size"),
    (["--val-size", "70000"], "--val-size"),
])
def test_split_sizes_beyond_the_dataset_are_refused(args, fix, mnist_data_dir, tmp_path,
                                                    capfd):
    out = tmp_path / "out"
    assert_refused(run_in_process(["--data-dir", str(mnist_data_dir), "--out", str(out),
                                   *args], capfd), fix)
    assert not out.exists()


def test_query_size_above_batchbald_candidates_is_fine_for_other_scores():
    from jaxal.loop import ALConfig, validate_config

    validate_config(ALConfig(acquisition="entropy", query_size=1500, rounds=1))
    with pytest.raises(Exception, match="raise --batchbald-candidates"):
        validate_config(ALConfig(acquisition="batchbald", posterior="laplace",
                                 predictive="mc", query_size=1500, rounds=1))


def test_infinite_stochastic_beta_is_refused_by_the_library():
    from jaxal.components import StochasticOptions
    from jaxal.errors import ConfigError
    from jaxal.loop import ALConfig, validate_config

    with pytest.raises(ConfigError, match="stochastic beta must be a finite number"):
        validate_config(ALConfig(batch="power",
                                 batch_options=StochasticOptions(beta=float("inf"))))


# --- one writer per out dir -------------------------------------------------------------

def test_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with lock_out_dir(out):
        before = tree_digest(out)
        proc = run_cli("jaxal.run", *MOONS, "--out", str(out))
        assert_refused(proc, f"is in use by jaxal pid {os.getpid()} on host ")
        assert "wait for it to finish, or choose another --out" in proc.stderr
        assert tree_digest(out) == before
        # The same process may take it again (the CLI, then run_experiment).
        with lock_out_dir(out):
            pass
        assert (out / LOCK_NAME).exists()
    assert not out.exists(), "the lock's own empty out dir is removed on release"


@pytest.mark.parametrize("module, args", [
    ("jaxal.compare", ["--acq", "random", "--seeds", "0"]),
    ("jaxal.label", ["query"]),
])
def test_comparison_and_labelling_dirs_take_one_writer_too(module, args, tmp_path):
    out = tmp_path / "out"
    with lock_out_dir(out):
        before = tree_digest(out)
        assert_refused(run_cli(module, *args, *MOONS, "--out", str(out)),
                       f"is in use by jaxal pid {os.getpid()}")
        assert tree_digest(out) == before


@pytest.mark.slow
def test_temp_files_of_a_killed_write_are_removed_by_the_next_run(finished_run, tmp_path,
                                                                   capfd):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    stale = [out / ".metrics.csv.k1ll3d00.tmp", out / ".figure5.png.tmp.png"]
    for path in stale:
        path.write_text("half a file")
    (out / "notes.tmp").write_text("the user's")   # not jaxal's name: kept
    proc = run_in_process([*MOONS, "--out", str(out)], capfd)
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in stale) and (out / "notes.tmp").exists()


def test_lock_of_a_dead_process_does_not_block(tmp_path):
    out = tmp_path / "out"
    code = ("import os, sys\nfrom jaxal.apps.rundir import lock_out_dir\n"
            "with lock_out_dir(sys.argv[1]):\n    os._exit(0)\n")   # dies holding it
    proc = subprocess.run([sys.executable, "-c", code, str(out)], timeout=60)
    assert proc.returncode == 0
    assert (out / LOCK_NAME).exists(), "a killed holder leaves its lock file"
    with lock_out_dir(out):
        pass


def test_two_processes_racing_for_one_out_dir_never_both_hold_it(tmp_path):
    out = tmp_path / "out"
    code = ("import sys, time\nfrom jaxal.errors import RunDirError\n"
            "from jaxal.apps.rundir import lock_out_dir\n"
            "held = 0\n"
            "for _ in range(200):\n"
            "    try:\n"
            "        with lock_out_dir(sys.argv[1]):\n"
            "            open(sys.argv[2], 'a').write('+')\n"
            "            time.sleep(0.001)\n"
            "            open(sys.argv[2], 'a').write('-')\n"
            "            held += 1\n"
            "    except RunDirError:\n"
            "        pass\n"
            "print(held)\n")
    trace = tmp_path / "trace"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out), str(trace)],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    held = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert sum(held) > 0
    # Strictly alternating: no writer entered while another was inside.
    assert trace.read_text() == "+-" * sum(held)


def test_run_experiment_refuses_an_out_dir_held_elsewhere(tmp_path):
    from jaxal.apps.experiment import ExperimentConfig, run_experiment

    out = tmp_path / "out"
    code = ("import sys, time\nfrom jaxal.apps.rundir import lock_out_dir\n"
            "with lock_out_dir(sys.argv[1]):\n    print('held', flush=True)\n"
            "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
            run_experiment(ExperimentConfig(dataset="moons"), out, progress=None)
    finally:
        holder.kill()
        holder.wait()


# --- divergence -------------------------------------------------------------------------

def small_moons_config(rounds: int):
    from jaxal.apps.experiment import ExperimentConfig
    from jaxal.loop import ALConfig
    from jaxal.train import TrainConfig

    return ExperimentConfig(dataset="moons", seed=1, val_size=50, pool_size=200,
                            al=ALConfig(rounds=rounds, query_size=5, init_per_class=2,
                                        train=TrainConfig(steps=30, batch_size=8)))


@pytest.mark.slow
def test_nan_loss_stops_the_run_at_its_round_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch):
    import jaxal.loop.round as loop
    from jaxal.apps.experiment import run_experiment
    from jaxal.apps.results import read_metrics

    config = small_moons_config(rounds=4)
    real_round = loop.al_round

    def round_2_diverges(key, state, learner, data):
        state, info = real_round(key, state, learner, data)
        if info.round == 2:
            info = info._replace(metrics=info.metrics._replace(train_loss=float("nan")))
        return state, info

    monkeypatch.setattr(loop, "al_round", round_2_diverges)
    out = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"^round 2: the training loss \(nan\) is not "
                                            r"finite.*rounds 0-1.*lower --lr"):
        run_experiment(config, out, progress=None)
    assert [r["round"] for r in read_metrics(out)] == [0, 1]
    assert not (out / LOCK_NAME).exists()
    # The checkpoint is round 1's: resuming (without the fault) continues from there.
    monkeypatch.setattr(loop, "al_round", real_round)
    lines = []
    _, infos = run_experiment(config, out, progress=lines.append)
    assert lines[0] == f"resuming {out} after round 1 of 4"
    assert [i.round for i in infos] == [0, 1, 2, 3, 4]


def test_non_finite_posterior_stops_the_run(tmp_path, monkeypatch):
    """One NaN in one leaf of the posterior is enough (all float leaves are checked)."""
    import jaxal.loop.round as loop
    from jaxal.apps.experiment import run_experiment

    config = small_moons_config(rounds=2)
    real_round = loop.al_round

    def round_1_posterior_nan(key, state, learner, data):
        state, info = real_round(key, state, learner, data)
        leaves, tree = jax.tree.flatten(state.posterior)
        leaves[-1] = leaves[-1].at[..., 0].set(jnp.nan)
        return state._replace(posterior=jax.tree.unflatten(tree, leaves)), info

    monkeypatch.setattr(loop, "al_round", round_1_posterior_nan)
    with pytest.raises(DivergedError, match=r"^round 1: the posterior is not finite"):
        run_experiment(config, tmp_path / "run", progress=None)


@pytest.mark.slow
def test_real_divergence_and_a_diverged_flag(tmp_path):
    from jaxal.apps.experiment import ExperimentConfig, run_experiment
    from jaxal.apps.results import read_metrics
    from jaxal.loop import ALConfig
    from jaxal.train import TrainConfig

    def config(optimizer, lr):
        return ExperimentConfig(dataset="moons", seed=0, val_size=50, pool_size=200,
                                al=ALConfig(rounds=1, query_size=5, init_per_class=2,
                                            train=TrainConfig(steps=50, batch_size=8,
                                                              optimizer=optimizer,
                                                              learning_rate=lr)))

    # SGD at lr 1e3 overflows to NaN in round 0: nothing is kept but the config.
    with pytest.raises(DivergedError, match="round 0: the training loss"):
        run_experiment(config("sgd", 1e3), tmp_path / "sgd", progress=None)
    assert not (tmp_path / "sgd" / "metrics.jsonl").exists()
    # Adam at lr 1e6 stays finite but ends far above log 2: flagged and warned about.
    lines = []
    run_experiment(config("adam", 1e6), tmp_path / "adam", progress=lines.append)
    assert all(r["diverged"] for r in read_metrics(tmp_path / "adam"))
    assert lines[0].startswith("memory: about ")    # a fresh run's estimate, at start
    assert "warning: training diverged" in lines[1]
    run_experiment(config("adam", 1e-2), tmp_path / "ok", progress=None)
    assert not any(r["diverged"] for r in read_metrics(tmp_path / "ok"))


@pytest.mark.slow
def test_diverged_cli_run_exits_2_with_the_round(tmp_path):
    proc = run_cli("jaxal.run", *MOONS, "--optimizer", "sgd", "--lr", "1000", "--out",
                   str(tmp_path / "o"))
    assert_refused(proc, "round 0: the training loss (nan) is not finite")


# --- Ctrl-C -----------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_says_where_to_resume_and_the_rerun_finishes(tmp_path):
    out = tmp_path / "run"
    # 1,000 steps a round: the run must still be going when round 1's line is read (with
    # its programs in the compilation cache, 30 steps a round end in well under a second);
    # 4 rounds: the signal comes at once, 3 rounds of 1,000 steps before the end, and the
    # rerun that finishes them stays short.
    args = [sys.executable, "-m", "jaxal.run", *MOONS, "--rounds", "4", "--steps", "1000",
            "--out", str(out)]
    # Ctrl-C's default handling in the child, however pytest was started: a shell starts a
    # background job (`pytest &`) with SIGINT ignored, and children inherit that.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = proc.stdout.readline()
    while not line.startswith("round   1/"):
        assert line, proc.stderr.read()
        line = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    done = int(last.split("interrupted after round ")[1].split(";")[0])
    assert last.endswith("; rerun the same command to resume") and done >= 1
    assert not (out / LOCK_NAME).exists()
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    # The devices it runs on first, then where it resumes.
    devices, resuming = again.stdout.splitlines()[:2]
    assert devices.startswith("devices: 1 (cpu:0); convolutions: ")
    assert resuming.startswith(f"resuming {out} after round {done} of 4")
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["round"] for row in rows] == list(range(5))
