"""``python -m jaxal.run`` end to end on real MNIST, and its refusals before any work."""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxal import data as datasets
from jaxal.cli.run import main

TINY = ["--dataset", "mnist", "--acq", "margin", "--rounds", "2", "--query-size", "5",
        "--init-per-class", "1", "--pool-size", "600", "--val-size", "100", "--steps", "20",
        "--batch-size", "16", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny_run(mnist_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxal.run", *TINY, "--data-dir", str(mnist_data_dir),
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


@pytest.mark.slow
def test_cli_writes_every_output(tiny_run, mnist_data_dir):
    out, stdout = tiny_run
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.npz", "config.json", "extremes.npz", "figure4.pdf", "figure4.png",
        "figure5.pdf", "figure5.png", "metrics.csv", "metrics.jsonl", "queries.jsonl",
        "query_classes.csv"]
    # One progress line per round.
    assert [line.split()[1] for line in stdout.splitlines() if line.startswith("round")] == [
        "0/2", "1/2", "2/2"]

    config = json.loads((out / "config.json").read_text())
    exp = config["experiment"]
    assert exp["dataset"] == "mnist" and exp["seed"] == 3 and exp["pool_size"] == 600
    assert exp["al"]["acquisition"] == "margin" and exp["al"]["query_size"] == 5
    assert exp["al"]["train"]["steps"] == 20
    assert config["num_pool"] == 600 and config["num_val"] == 100
    assert config["num_test"] == 10000
    # TINY gives everything but the epoch schedule's, which MNIST's protocol leaves unused.
    assert config["from_protocol"] == {"dataset": "mnist",
                                       "source": "Gal et al. 2017; Kirsch et al. 2019",
                                       "fields": ["min_steps", "max_steps", "augment"]}

    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert [int(r["num_labels"]) for r in rows] == [10, 15, 20]
    for r, j in zip(rows, jsonl, strict=True):
        for key in ("train_loss", "test_loss", "test_accuracy", "test_entropy", "val_loss",
                    "val_accuracy", "score_s", "train_s", "posterior_s", "eval_s"):
            assert float(r[key]) == pytest.approx(j[key], rel=1e-12)
            assert np.isfinite(j[key])
        assert 0.0 <= j["test_accuracy"] <= 1.0 and 0.0 <= j["val_accuracy"] <= 1.0
        assert 0.0 <= j["test_entropy"] <= np.log(10) + 1e-6
        assert j["train_s"] > 0 and j["eval_s"] > 0
    assert jsonl[0]["score_s"] == 0.0 and jsonl[1]["score_s"] > 0

    # Queried points: distinct, in the pool, labels and dataset indices that match TFDS.
    queries = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert [q["round"] for q in queries] == [1, 2]
    ds = datasets.load_dataset("mnist", mnist_data_dir)
    split = datasets.make_al_split(ds, seed=3, val_size=100, pool_size=600)
    all_pool = [i for q in queries for i in q["pool_index"]]
    assert len(all_pool) == len(set(all_pool)) == 10
    for q in queries:
        assert len(q["pool_index"]) == len(q["score"]) == len(q["label"]) == 5
        np.testing.assert_array_equal(split.pool_index[q["pool_index"]], q["dataset_index"])
        np.testing.assert_array_equal(ds.train_labels[q["dataset_index"]], q["label"])
        assert q["score"] == sorted(q["score"], reverse=True)
        assert all(0.0 <= s <= 1.0 for s in q["score"])  # margin scores live in [0, 1]

    with open(out / "query_classes.csv") as f:
        counts = list(csv.DictReader(f))
    queried_labels = [label for q in queries for label in q["label"]]
    assert [int(r["num_labels"]) for r in counts] == [10, 15, 20]
    assert [int(counts[-1][f"class_{c}"]) for c in range(10)] == np.bincount(
        queried_labels, minlength=10).tolist()

    # Figure 4's record: per round the 5 best and worst margin scores of unlabelled points,
    # with their pool images and labels.
    with np.load(out / "extremes.npz") as f:
        extremes = dict(f)
    assert extremes["round"].tolist() == [1, 2]
    labelled_before = set()
    for r, q in enumerate(queries):
        top, bottom = extremes["top_index"][r], extremes["bottom_index"][r]
        assert q["top_pool_index"] == top.tolist() and q["bottom_pool_index"] == bottom.tolist()
        assert q["pool_index"] == top.tolist(), "top-k margin queries the top 5 scores"
        assert not (set(top.tolist()) | set(bottom.tolist())) & labelled_before
        assert min(extremes["top_score"][r]) >= max(extremes["bottom_score"][r])
        assert list(extremes["top_score"][r]) == sorted(extremes["top_score"][r], reverse=True)
        np.testing.assert_array_equal(extremes["top_label"][r],
                                      ds.train_labels[split.pool_index[top]])
        np.testing.assert_allclose(extremes["bottom_image"][r],
                                   split.pool_x[bottom].astype(np.float16))
        labelled_before |= set(q["pool_index"])

    png = (out / "figure5.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_rerun_with_other_config_refuses(tiny_run, mnist_data_dir, capsys):
    out, _ = tiny_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = [*TINY, "--data-dir", str(mnist_data_dir), "--out", str(out)]
    argv[argv.index("margin")] = "entropy"
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    assert re.search(r"acquisition: 'margin' .* != 'entropy'", capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "outputs were touched"


@pytest.mark.parametrize("args, message", [
    (["--query-size", "0"], "argument --query-size: expected a whole number >= 1"),
    (["--init-per-class", "100"], "exceeds the pool of 600"),
    (["--rounds", "200"], "lower --rounds or --query-size"),
    (["--steps", "0"], "argument --steps: expected a whole number >= 1"),
])
def test_invalid_values_fail_before_training(args, message, mnist_data_dir, tmp_path,
                                             monkeypatch, capsys):
    import jaxal.loop.round

    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(jaxal.loop.round, "init_state", no_training)
    argv = [*TINY, "--data-dir", str(mnist_data_dir), "--out", str(tmp_path / "o"), *args]
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "an out dir was created for an invalid run"


def test_unknown_acquisition_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--acq", "bold"])
    assert err.value.code == 2
    assert "invalid choice: 'bold'" in capsys.readouterr().err


def test_missing_dataset_names_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--dataset", "fashion_mnist", "--data-dir", str(tmp_path), "--out",
              str(tmp_path / "o")])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert str(tmp_path) in message and "jaxal.data prepare" in message


def _config(*args):
    from jaxal.cli.run import config_from_args, parser

    return config_from_args(parser().parse_args(list(args)))


def test_each_dataset_gets_its_protocol_and_a_given_value_wins():
    """MNIST keeps 20 labels, 10 a round, 20 rounds, 500 steps; CIFAR-10 gets 1,000
    labels, 1,000 a round, 10 rounds, by epochs; what the command gives overrides the
    protocol and is not listed as the protocol's."""
    mnist = _config("--dataset", "mnist")
    assert (mnist.al.init_per_class, mnist.al.query_size, mnist.al.rounds) == (2, 10, 20)
    assert (mnist.al.train.steps, mnist.al.train.epochs, mnist.al.train.batch_size) == (
        500, None, 32)
    assert set(mnist.from_protocol) == {"init_per_class", "query_size", "rounds", "steps",
                                        "epochs", "min_steps", "max_steps", "batch_size",
                                        "augment"}
    assert not mnist.al.train.augment
    cifar = _config("--dataset", "cifar10")
    assert (cifar.al.init_per_class, cifar.al.query_size, cifar.al.rounds) == (100, 1000, 10)
    t = cifar.al.train
    assert (t.epochs, t.min_steps, t.max_steps, t.batch_size) == (30.0, 500, 3000, 128)
    assert t.augment and not _config("--dataset", "cifar10", "--no-augment").al.train.augment
    given = _config("--dataset", "cifar10", "--rounds", "3", "--epochs", "5",
                    "--batch-size", "64")
    assert given.al.rounds == 3 and given.al.train.epochs == 5.0
    assert given.al.train.batch_size == 64 and given.al.query_size == 1000
    assert {"rounds", "epochs", "batch_size"}.isdisjoint(given.from_protocol)
    fixed = _config("--dataset", "cifar10", "--steps", "100")
    assert fixed.al.train.steps == 100 and fixed.al.train.epochs is None
    # Only the experiment is compared on resume: the record of defaults is not part of it.
    assert "from_protocol" not in cifar.to_dict()


def test_help_shows_every_protocol(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("cifar10: 100 labels per class to start, 1000 a round, 10 rounds, 30 epochs a "
            "fit (500-3000 steps of 128), augmented") in text
    assert "mnist: 2 labels per class to start, 10 a round, 20 rounds, 500 steps of 32" in text


def test_wider_cnn_options_and_fields_added_later_keep_old_run_dirs_resumable(tmp_path):
    """--channels/--hidden reach the model config (and are refused for the toy MLP); the
    fields added since run dirs were written leave the compared config unchanged at their
    defaults, so those dirs still resume, and appear when set."""
    from jaxal.apps.experiment import check_config

    wide = _config("--dataset", "cifar10", "--channels", "64", "128", "128", "--hidden", "256")
    assert wide.al.model.channels == (64, 128, 128) and wide.al.model.hidden == 256
    assert wide.to_dict()["al"]["model"]["channels"] == (64, 128, 128)
    assert wide.to_dict()["al"]["train"]["augment"] is True
    plain = _config("--dataset", "mnist").to_dict()["al"]
    assert "augment" not in plain["train"]
    assert set(plain["model"]) == {"dropout"}
    with pytest.raises(Exception, match="--channels and --hidden shape the CNN"):
        check_config(_config("--dataset", "moons", "--hidden", "64"))
