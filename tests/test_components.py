"""A component with options of its own and its own training is one module plus one
registry entry: its flags appear in --help, its check refuses a bad value in one line,
it runs in the loop with its options bound, config.json records them, and a run of it
resumes where it stopped. Run dirs of the format before options moved into the
components still resume."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import toy_posterior
from toy_posterior import JitterOptions

from jaxal.apps.experiment import run_experiment
from jaxal.apps.results import read_metrics, read_queries
from jaxal.components import POSTERIORS, StochasticOptions, options_from_flags
from jaxal.config import ALConfig, ExperimentConfig, TrainConfig, migrate_config_dict
from jaxal.loop import make_learner
from jaxal.model import mlp


def stop_after_round_1(line: str):
    """A progress callback that interrupts a run once round 1 is written."""
    if line.startswith("round   1"):
        raise KeyboardInterrupt


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


@pytest.fixture
def jitter(monkeypatch):
    monkeypatch.setitem(POSTERIORS, "jitter", toy_posterior.ENTRY)


def jitter_config(rounds: int = 3, **options) -> ExperimentConfig:
    return ExperimentConfig(dataset="moons", val_size=50, pool_size=200, al=ALConfig(
        acquisition="bald", posterior="jitter", predictive="mc",
        posterior_options=JitterOptions(**options), rounds=rounds, query_size=5,
        init_per_class=2, train=TrainConfig(steps=20, batch_size=8)))


def test_its_flags_are_in_help_and_its_check_refuses(jitter, capsys, tmp_path):
    from jaxal.cli.run import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--jitter-scale" in out and "--posterior jitter: std of the noise" in out
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "moons", "--posterior", "jitter", "--jitter-scale", "-1",
              "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("error: --jitter-scale must be > 0 (got -1.0); "
                                            "try 0.05")


def test_flags_fill_only_the_chosen_components_options(jitter):
    flags = {"--jitter-scale": 0.2, "--stochastic-beta": 3.0, "--ensemble-size": None}
    assert options_from_flags("posterior", "jitter", flags) == JitterOptions(scale=0.2)
    assert options_from_flags("batch", "power", flags) == StochasticOptions(beta=3.0)
    assert options_from_flags("batch", "topk", flags).FLAGS == {}


def test_its_training_hook_and_options_are_bound_in_the_learner(jitter):
    plain = make_learner(mlp(2, hidden=(8,)), ALConfig(), (2,), 2)
    config = jitter_config(init_scale=0.5).al
    learner = make_learner(mlp(2, hidden=(8,)), config, (2,), 2)
    key = jax.random.key(3)
    for a, b in zip(jax.tree.leaves(learner.init(key)), jax.tree.leaves(plain.init(key)),
                    strict=True):
        np.testing.assert_allclose(a, 0.5 * b, rtol=1e-6)


@pytest.mark.slow
def test_it_runs_in_the_loop_records_its_options_and_resumes(jitter, tmp_path):
    config = jitter_config(init_scale=0.5, samples=4)
    _, whole = run_experiment(config, tmp_path / "whole", progress=None)
    assert [i.round for i in whole] == [0, 1, 2, 3]
    recorded = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert recorded["experiment"]["al"]["posterior_options"] == {
        "scale": 0.05, "samples": 4, "init_scale": 0.5}

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "stopped", progress=stop_after_round_1)
    assert len(read_metrics(tmp_path / "stopped")) == 2
    lines = []
    run_experiment(config, tmp_path / "stopped", progress=lines.append)
    assert lines[0].startswith(f"resuming {tmp_path / 'stopped'} after round 1")
    assert read_queries(tmp_path / "stopped") == read_queries(tmp_path / "whole")
    # Seconds per stage aside, the same numbers.
    assert (without_seconds(read_metrics(tmp_path / "stopped"))
            == without_seconds(read_metrics(tmp_path / "whole")))


# config.json's "experiment" of a run written before options moved into the components,
# recorded from jaxal at 57b3532 (`python -m jaxal.run --dataset moons --acq bald --batch
# power --stochastic-beta 2 --posterior ensemble --ensemble-size 3`).
OLD_FORMAT = Path(__file__).parent / "data" / "config_57b3532_ensemble_power.json"


def test_an_old_format_config_reads_as_the_same_run_today():
    from jaxal.cli.run import config_from_args, parser

    args = parser().parse_args(["--dataset", "moons", "--acq", "bald", "--batch", "power",
                                "--stochastic-beta", "2", "--posterior", "ensemble",
                                "--ensemble-size", "3"])
    today = json.loads(json.dumps(config_from_args(args).to_dict()))
    assert migrate_config_dict(json.loads(OLD_FORMAT.read_text())) == today
    assert migrate_config_dict(today) == today


def _to_old_format(experiment: dict) -> dict:
    """Today's ``experiment`` dict of an ensemble run written as jaxal at 57b3532 wrote it
    (the layout of OLD_FORMAT): the options flat in ``al`` and an ``al.laplace`` object."""
    old = json.loads(OLD_FORMAT.read_text())["al"]
    al = {k: v for k, v in experiment["al"].items() if not k.endswith("_options")}
    al.update(hybrid_beta=old["hybrid_beta"], stochastic_beta=old["stochastic_beta"],
              batchbald_candidates=old["batchbald_candidates"],
              batchbald_configs=old["batchbald_configs"], laplace=old["laplace"],
              ensemble_size=experiment["al"]["posterior_options"]["size"],
              dropout_samples=old["dropout_samples"])
    return {**experiment, "al": al}


@pytest.mark.slow
def test_a_run_dir_of_the_old_format_resumes_to_the_same_result(tmp_path):
    """A run stopped after round 1, its config.json and checkpoint manifest rewritten in
    the old format (as an earlier jaxal left them), resumes and ends as an uninterrupted
    run does; its config.json is then today's format."""
    import numpy as np

    from jaxal.apps.results import config_digest
    from jaxal.components import EnsembleOptions

    config = ExperimentConfig(dataset="moons", val_size=50, pool_size=200, al=ALConfig(
        acquisition="bald", posterior="ensemble", predictive="mc",
        posterior_options=EnsembleOptions(size=2), rounds=3, query_size=5,
        train=TrainConfig(steps=20, batch_size=8)))
    run_experiment(config, tmp_path / "whole", progress=None)

    run = tmp_path / "old"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, run, progress=stop_after_round_1)
    recorded = json.loads((run / "config.json").read_text())
    old = _to_old_format(recorded["experiment"])
    assert migrate_config_dict(old) == recorded["experiment"]
    (run / "config.json").write_text(json.dumps({**recorded, "experiment": old}))
    with np.load(run / "checkpoint.npz") as f:
        arrays = {name: f[name] for name in f.files}
    manifest = json.loads(arrays["manifest"].tobytes())
    manifest.update(config=old, config_sha256=config_digest(old))
    arrays["manifest"] = np.frombuffer(json.dumps(manifest, sort_keys=True).encode(),
                                       np.uint8)
    np.savez(run / "checkpoint.npz", **arrays)

    lines = []
    run_experiment(config, run, progress=lines.append)
    assert lines[0].startswith(f"resuming {run} after round 1")
    assert without_seconds(read_metrics(run)) == without_seconds(read_metrics(tmp_path / "whole"))
    assert read_queries(run) == read_queries(tmp_path / "whole")
    assert "posterior_options" in json.loads((run / "config.json").read_text())[
        "experiment"]["al"]
