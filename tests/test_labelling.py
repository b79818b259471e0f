"""Real labelling: query proposes, label records (validated, atomic), the next query uses
the labels; simulation is the case where the oracle is the dataset."""

import json

import numpy as np
import pytest

from jaxal.experiment import ExperimentConfig, load_split
from jaxal.label import main as label_main
from jaxal.labelling import (
    LabelError,
    parse_label_csv,
    propose,
    read_labels,
    record_labels,
    record_oracle_labels,
)
from jaxal.loop import ALConfig, ConfigError
from jaxal.train import TrainConfig

CONFIG = ExperimentConfig(dataset="moons", seed=2, val_size=50, pool_size=150,
                          al=ALConfig(acquisition="entropy", query_size=4,
                                      train=TrainConfig(steps=40, batch_size=8)))


def state(session):
    return {p.name: p.read_bytes() for p in sorted(session.iterdir())}


def test_query_label_rounds_grow_the_labelled_set_and_use_the_labels(tmp_path):
    session = tmp_path / "s"
    split = load_split(CONFIG)
    seen = set()
    for r in range(1, 4):
        proposal = propose(session, CONFIG)
        assert proposal.round == r and proposal.num_labels == 4 * (r - 1)
        assert len(set(proposal.pool_index.tolist())) == 4
        assert not seen & set(proposal.pool_index.tolist()), "proposed a labelled point"
        np.testing.assert_array_equal(proposal.dataset_index,
                                      split.pool_index[proposal.pool_index])
        # Rerunning query without new labels proposes the same batch.
        again = propose(session, CONFIG)
        np.testing.assert_array_equal(again.pool_index, proposal.pool_index)
        assert again.round == r
        new = record_oracle_labels(session, CONFIG)
        assert new == {int(i): int(split.pool_y[i]) for i in proposal.pool_index}
        seen |= set(new)
    assert set(read_labels(session)) == seen and len(seen) == 12
    assert sorted(p.name for p in session.glob("query_*.csv")) == [
        "query_1.csv", "query_2.csv", "query_3.csv"]


def test_next_query_depends_on_the_labels_given(tmp_path):
    """Same proposals, different answers (true vs flipped labels): the next batches differ,
    so the labels a person gives are what the model trains on."""
    batches = []
    for flip in (False, True):
        session = tmp_path / f"s{flip}"
        first = propose(session, CONFIG)
        split = load_split(CONFIG)
        rows = "".join(f"{i},{(1 - split.pool_y[i]) if flip else split.pool_y[i]}\n"
                       for i in first.pool_index)
        (tmp_path / "answers.csv").write_text("index,label\n" + rows)
        record_labels(session, tmp_path / "answers.csv")
        batches.append(propose(session, CONFIG).pool_index.tolist())
    assert batches[0] != batches[1]


@pytest.fixture(scope="module")
def pending_session(tmp_path_factory):
    """A session with one labelled round and a pending proposal (shared: a rejected file
    must leave it unchanged, which each test checks)."""
    session = tmp_path_factory.mktemp("labelling") / "s"
    propose(session, CONFIG)
    record_oracle_labels(session, CONFIG)
    propose(session, CONFIG)
    return session


@pytest.mark.parametrize("text, message", [
    ("index,label\n3,0\n3,1\n", "row 2: duplicate index 3"),
    ("7000,1\n", "unknown index 7000"),
    ("-1,0\n", "unknown index -1"),
    ("4,2\n", "label 2 out of range (0..1)"),
    ("4\n", "expected 'index,label'"),
    ("4,cat\n", "must be integers"),
    ("index,label\n", "no rows"),
])
def test_bad_label_files_are_rejected_and_change_nothing(pending_session, tmp_path, text,
                                                        message):
    session = pending_session
    before = state(session)
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(LabelError, match=r"nothing recorded|no rows") as err:
        record_labels(session, tmp_path / "bad.csv")
    assert message in str(err.value)
    assert state(session) == before


def test_relabelling_a_labelled_point_is_refused(tmp_path):
    known = {5: 1}
    with pytest.raises(LabelError, match="index 5 is already labelled 1"):
        parse_label_csv("5,0\n", 2, 10, known)
    assert parse_label_csv("pool_index,label\n6,0\n7,1\n", 2, 10, known) == {6: 0, 7: 1}


def test_session_refuses_another_config(tmp_path):
    propose(tmp_path / "s", CONFIG)
    other = CONFIG._replace(al=CONFIG.al._replace(acquisition="margin"))
    with pytest.raises(ConfigError, match="acquisition: 'entropy'"):
        propose(tmp_path / "s", other)


def test_cli_query_label_on_mnist_writes_a_contact_sheet(tmp_path, mnist_data_dir, capsys):
    opts = ["--out", str(tmp_path / "s"), "--dataset", "mnist", "--pool-size", "300",
            "--val-size", "100", "--query-size", "6", "--steps", "10", "--data-dir",
            str(mnist_data_dir)]
    label_main(["query", *opts])
    assert "round 1: label pool indices" in capsys.readouterr().out
    png = (tmp_path / "s" / "query_1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    pending = json.loads((tmp_path / "s" / "pending.json").read_text())["pool_index"]
    (tmp_path / "a.csv").write_text("".join(f"{i},{k % 10}\n" for k, i in enumerate(pending)))
    label_main(["label", *opts, "--csv", str(tmp_path / "a.csv")])
    assert read_labels(tmp_path / "s") == {i: k % 10 for k, i in enumerate(pending)}
    label_main(["query", *opts])
    out = capsys.readouterr().out
    assert "round 2" in out and "from 6 labels" in out
    with pytest.raises(SystemExit, match="exactly one of --csv FILE or --oracle"):
        label_main(["label", *opts])
