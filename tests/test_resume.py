"""Resumable, reproducible runs: a killed run continues bit-identically from its checkpoint."""

import json
import pickle
import shutil

import pytest

from jaxal.apps.experiment import ExperimentConfig, run_experiment
from jaxal.apps.results import CHECKPOINT, PICKLE_CHECKPOINT, read_metrics, read_queries
from jaxal.errors import RunDirError
from jaxal.loop import ALConfig
from jaxal.posteriors.laplace import LaplaceOptions
from jaxal.train import TrainConfig

TIMINGS = ("score_s", "train_s", "posterior_s", "eval_s")

CONFIG = ExperimentConfig(
    dataset="moons", seed=4, val_size=50, pool_size=200,
    al=ALConfig(acquisition="bald", posterior="laplace", predictive="mc", rounds=4,
                query_size=5, init_per_class=2, train=TrainConfig(steps=30, batch_size=8),
                posterior_options=LaplaceOptions(samples=16, prior_fit="val-nll",
                                      prior_precision_grid=(0.1, 1.0, 10.0))))


class Killed(Exception):
    pass


def kill_after(round_: int):
    def progress(line: str):
        if line.startswith("round") and int(line.split()[1].split("/")[0]) == round_:
            raise Killed
    return progress


def results(out):
    metrics = [{k: v for k, v in row.items() if k not in TIMINGS}
               for row in read_metrics(out)]
    return metrics, read_queries(out)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    run_experiment(CONFIG, out, progress=None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kill_round", [0, 2])
def test_killed_run_resumes_bit_identically(uninterrupted, tmp_path, kill_round):
    out = tmp_path / "run"
    with pytest.raises(Killed):
        run_experiment(CONFIG, out, progress=kill_after(kill_round))
    assert (out / CHECKPOINT).exists()
    assert [r["round"] for r in read_metrics(out)] == list(range(kill_round + 1))
    lines = []
    _, infos = run_experiment(CONFIG, out, progress=lines.append)
    assert lines[0].startswith(f"resuming {out} after round {kill_round} of 4")
    assert len(lines) == 1 + 4 - kill_round, "finished rounds must not be recomputed"
    assert [i.round for i in infos] == [0, 1, 2, 3, 4]
    # Bit-identical: JSON floats round-trip exactly, so == compares every bit.
    assert results(out) == results(uninterrupted)


@pytest.mark.slow
def test_finished_run_rerun_changes_nothing(uninterrupted):
    before = results(uninterrupted)
    lines = []
    run_experiment(CONFIG, uninterrupted, progress=lines.append)
    assert lines == [f"resuming {uninterrupted} after round 4 of 4"]
    assert results(uninterrupted) == before


@pytest.mark.slow
def test_same_seed_same_metrics_and_another_seed_differs(uninterrupted, tmp_path):
    run_experiment(CONFIG, tmp_path / "again", progress=None)
    assert results(tmp_path / "again") == results(uninterrupted)
    run_experiment(CONFIG._replace(seed=5), tmp_path / "other", progress=None)
    assert results(tmp_path / "other")[1] != results(uninterrupted)[1]


@pytest.mark.slow
def test_checkpoint_from_another_config_is_never_mixed_in(uninterrupted, tmp_path):
    with pytest.raises(RunDirError, match=r"rounds: 4 .* != 5"):
        run_experiment(CONFIG._replace(al=CONFIG.al._replace(rounds=5)), uninterrupted,
                       progress=None)
    config = json.loads((uninterrupted / "config.json").read_text())
    assert config["experiment"]["al"]["rounds"] == 4


@pytest.mark.slow
def test_checkpoint_keeps_the_config_when_config_json_is_deleted(uninterrupted, tmp_path):
    out = shutil.copytree(uninterrupted, tmp_path / "run")
    (out / "config.json").unlink()
    checkpoint = (out / CHECKPOINT).read_bytes()
    with pytest.raises(RunDirError, match=rf"^{out / CHECKPOINT} holds a run with a "
                                          r"different configuration \(al\.rounds: 4 .* != 5"):
        run_experiment(CONFIG._replace(al=CONFIG.al._replace(rounds=5)), out, progress=None)
    assert not (out / "config.json").exists(), "a refused out dir is not changed"
    assert (out / CHECKPOINT).read_bytes() == checkpoint
    lines = []
    run_experiment(CONFIG, out, progress=lines.append)
    assert lines == [f"resuming {out} after round 4 of 4"]
    assert results(out) == results(uninterrupted)
    assert json.loads((out / "config.json").read_text())["experiment"]["al"]["rounds"] == 4


class Payload:
    """Unpickling this creates ``marker``: the proof that a file's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickle_checkpoint_of_an_earlier_jaxal_never_runs(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "code-ran"
    (out / PICKLE_CHECKPOINT).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(RunDirError, match=rf"^{out / PICKLE_CHECKPOINT} was written by an "
                                          "earlier jaxal.*rerun in a new out dir"):
        run_experiment(CONFIG, out, progress=None)
    assert not marker.exists()
    assert not (out / CHECKPOINT).exists() and not (out / "metrics.jsonl").exists()
