"""The seeds of a strategy as one vmapped program (``jaxal.apps.seeds``): the same queries and
metrics as the seeds run one after another, resumable, and refused (or run one after
another) where the seeds cannot share a program."""

import shutil

import numpy as np
import pytest

from jaxal.apps.experiment import run_experiment
from jaxal.apps.results import read_metrics, read_queries
from jaxal.apps.seeds import run_seeds, stackable
from jaxal.cli.compare import main as compare_main
from jaxal.config import ALConfig, ExperimentConfig, LaplaceOptions, TrainConfig
from jaxal.errors import ConfigError

TIMINGS = ("score_s", "train_s", "posterior_s", "eval_s")
AL = ALConfig(acquisition="bald", posterior="laplace", predictive="mc", rounds=2,
              query_size=4, posterior_options=LaplaceOptions(samples=8),
              train=TrainConfig(steps=30, batch_size=8))


def config(seed: int, **al) -> ExperimentConfig:
    return ExperimentConfig(dataset="moons", seed=seed, val_size=40, pool_size=120,
                            al=AL._replace(**al))


def same_run(a, b) -> None:
    """The same queried points, in order; scores and metrics to 1e-3 (the vmapped and the
    plain programs round differently, and BALD's 8-sample MC average carries that on).
    Of the Figure-4 extremes only the scores: points whose scores tie to rounding may
    swap places."""
    drop = ("top_pool_index", "bottom_pool_index", *TIMINGS)
    for rows_a, rows_b in ((read_queries(a), read_queries(b)),
                           (read_metrics(a), read_metrics(b))):
        assert len(rows_a) == len(rows_b)
        for ra, rb in zip(rows_a, rows_b, strict=True):
            assert ra.keys() == rb.keys()
            for k in ra.keys() - set(drop):
                if isinstance(ra[k], float) or (isinstance(ra[k], list) and ra[k]
                                                and isinstance(ra[k][0], float)):
                    np.testing.assert_allclose(ra[k], rb[k], rtol=1e-3, atol=1e-5, err_msg=k)
                else:
                    assert ra[k] == rb[k], k


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    for seed in (0, 1):
        run_experiment(config(seed), root / f"s{seed}", progress=None)
    return root


@pytest.mark.slow
def test_vmapped_seeds_query_and_score_as_one_seed_at_a_time(sequential, tmp_path):
    lines = []
    infos = run_seeds([config(s) for s in (0, 1)], [tmp_path / f"v{s}" for s in (0, 1)],
                      progress=lines.append)
    assert [len(i) for i in infos] == [3, 3]
    assert sum(line.startswith("seed 1: round   2/2") for line in lines) == 1
    for seed in (0, 1):
        same_run(tmp_path / f"v{seed}", sequential / f"s{seed}")
        assert (tmp_path / f"v{seed}" / "figure5.png").exists()


@pytest.mark.slow
def test_a_killed_vmapped_run_resumes_and_seeds_at_other_rounds_run_one_by_one(
        sequential, tmp_path):
    class Killed(Exception):
        pass

    def kill_after_round_1(line):
        if "round   1/" in line:
            raise Killed

    dirs = [tmp_path / f"v{s}" for s in (0, 1)]
    with pytest.raises(Killed):
        run_seeds([config(0), config(1)], dirs, progress=kill_after_round_1)
    assert [r["round"] for r in read_metrics(dirs[0])] == [0, 1]
    assert [r["round"] for r in read_metrics(dirs[1])] == [0]      # killed before its write
    # Seeds at different rounds cannot share a program: nothing runs, None.
    assert run_seeds([config(0), config(1)], dirs, progress=None) is None
    with pytest.raises(Killed):                                      # seed 1 to round 1 too
        run_experiment(config(1), dirs[1], progress=kill_after_round_1)
    lines = []
    run_seeds([config(0), config(1)], dirs, progress=lines.append)
    assert lines[:2] == ["seeds [0, 1] as one program",
                         "resuming seeds [0, 1] after round 1 of 2"]
    for seed in (0, 1):
        same_run(dirs[seed], sequential / f"s{seed}")


@pytest.mark.slow
def test_compare_runs_the_seeds_vmapped_and_the_rest_one_by_one(sequential, tmp_path, capsys):
    args = ["--dataset", "moons", "--acq", "bald", "--posterior", "laplace", "--predictive",
            "mc", "--samples", "8", "--rounds", "2", "--query-size", "4", "--steps", "30",
            "--batch-size", "8", "--pool-size", "120", "--val-size", "40", "--seeds", "0", "1",
            "--out", str(tmp_path / "cmp"), "--seeds-form", "vmapped"]
    compare_main(args)
    assert "seeds [0, 1] as one program" in capsys.readouterr().out
    for seed in (0, 1):
        same_run(tmp_path / "cmp" / "runs" / f"bald-laplace-seed{seed}", sequential / f"s{seed}")
    # A seed's dir removed: the other is finished, so they run one after another.
    shutil.rmtree(tmp_path / "cmp" / "runs" / "bald-laplace-seed1")
    compare_main(args)
    out = capsys.readouterr().out
    assert "seeds [0, 1]: checkpoints of different rounds, so one after another" in out
    assert "as one program" not in out and "== run 2/2: bald/laplace, seed 1" in out
    same_run(tmp_path / "cmp" / "runs" / "bald-laplace-seed1", sequential / "s1")


@pytest.mark.parametrize(("configs", "why"), [
    ([config(0), config(0)], "the seeds repeat"),
    ([config(0), config(1, query_size=5)], "differ in more than their seed"),
    ([config(0, pseudo_label=0.9), config(1, pseudo_label=0.9)], "pseudo-labels"),
])
def test_seeds_that_cannot_share_a_program_are_refused_with_the_reason(tmp_path, configs,
                                                                        why):
    assert why in stackable(configs)
    with pytest.raises(ConfigError, match=why):
        run_seeds(configs, [tmp_path / "a", tmp_path / "b"])
