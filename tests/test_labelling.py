"""Real labelling: query proposes, label records (validated, atomic), the next query uses
the labels; simulation is the case where the oracle is the dataset. Label files, the
session's own labels.csv and its JSON files are checked, each problem reported in one line
that names the file and the fix."""

import json

import numpy as np
import pytest

from jaxal.apps.experiment import ExperimentConfig, load_split
from jaxal.apps.label_files import LabelError, parse_label_csv, read_labels
from jaxal.apps.labelling import propose, record_labels, record_oracle_labels
from jaxal.cli.label import main as label_main
from jaxal.errors import ConfigError, JaxalError
from jaxal.loop import ALConfig
from jaxal.train import TrainConfig

CONFIG = ExperimentConfig(dataset="moons", seed=2, val_size=50, pool_size=150,
                          al=ALConfig(acquisition="entropy", query_size=4,
                                      train=TrainConfig(steps=40, batch_size=8)))


def state(session):
    return {p.name: p.read_bytes() for p in sorted(session.iterdir())}


@pytest.mark.slow
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
    ("index,label\n3,0\n3,1\n", "line 3: duplicate index 3 (line 2 labels it 0)"),
    ("7000,1\n", "unknown index 7000"),
    ("-1,0\n", "unknown index -1"),
    ("4,2\n", "label 2 out of range (0..1)"),
    ("4\n", "expected 'index,label'"),
    ("4,cat\n", "label 'cat' is not a plain decimal number"),
    ("index,label\n", "has no labels"),
])
def test_bad_label_files_are_rejected_and_change_nothing(pending_session, tmp_path, text,
                                                        message):
    session = pending_session
    before = state(session)
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(LabelError, match=r"nothing recorded|has no labels") as err:
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
    with pytest.raises(ConfigError, match="acquisition: 'entropy'") as err:
        propose(tmp_path / "s", other)
    assert "\n" not in str(err.value)


@pytest.mark.slow
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
    with pytest.raises(SystemExit) as exit_:
        label_main(["label", *opts])
    assert exit_.value.code == 2
    assert "exactly one of --csv FILE or --oracle" in capsys.readouterr().err


# --- label files, labels.csv and the session's JSON, without training -------------------

NUM_POOL, NUM_CLASSES = 1000, 3


@pytest.fixture
def session(tmp_path):
    """A session dir as ``query`` leaves it (pool of 1000, 3 classes, pool points 1 and 2
    proposed), written by hand: these checks need no dataset and no training."""
    session = tmp_path / "session"
    session.mkdir()
    (session / "session.json").write_text(json.dumps(
        {"experiment": {}, "num_pool": NUM_POOL, "num_classes": NUM_CLASSES}))
    (session / "pending.json").write_text(json.dumps({"round": 1, "pool_index": [1, 2]}))
    (session / "query_1.csv").write_text("pool_index,dataset_index,score\n1,1,nan\n2,2,nan\n")
    return session


def rejected(session, tmp_path, content: bytes) -> str:
    """The LabelError message of recording a file of ``content``; checks nothing changed."""
    before = state(session)
    (tmp_path / "answers.csv").write_bytes(content)
    with pytest.raises(LabelError) as err:
        record_labels(session, tmp_path / "answers.csv")
    assert state(session) == before
    assert isinstance(err.value, JaxalError) and isinstance(err.value, ValueError)
    return str(err.value)


def test_first_row_with_a_bom_is_data_not_a_header(session, tmp_path):
    (tmp_path / "answers.csv").write_bytes("\ufeff341,1\n342,2".encode())
    assert record_labels(session, tmp_path / "answers.csv") == {341: 1, 342: 2}
    assert read_labels(session) == {341: 1, 342: 2}


@pytest.mark.parametrize("header", ["\ufeffindex,label", "pool_index,label",
                                    " index , label ", "\ufeff pool_index,label\r"])
def test_exact_header_names_with_bom_and_spaces_are_a_header(session, tmp_path, header):
    (tmp_path / "answers.csv").write_bytes(f"{header}\n5,1\r\n".encode())
    assert record_labels(session, tmp_path / "answers.csv") == {5: 1}


@pytest.mark.parametrize("row, cell", [
    ("+341,1", "'+341'"), ("341.0,1", "'341.0'"), ("3_41,1", "'3_41'"),
    ("３４１,1", "'３４１'"), (" 3 4,1", "'3 4'"), ("341,1.0", "'1.0'"), ("341,٣", "'٣'"),
    ("Index,Label", "'Index'"),
])
def test_first_row_that_is_not_plain_decimal_is_rejected_not_skipped(session, tmp_path, row,
                                                                     cell):
    message = rejected(session, tmp_path, f"{row}\n342,2\n".encode())
    assert "\n  line 1: " in message and f"{cell} is not a plain decimal number" in message
    assert "answers.csv rejected, nothing recorded (1 problem)" in message


def test_problems_are_numbered_by_file_line_counting_header_and_blank_lines(session,
                                                                            tmp_path):
    text = "\n\nindex,label\n\n1,0\n\n1,2\nx,1\n5,9\n-1,0\n1000,0\n2,1,0\n"
    message = rejected(session, tmp_path, text.encode())
    assert message.splitlines()[1:] == [
        "  line 7: duplicate index 1 (line 5 labels it 0)",
        "  line 8: index 'x' is not a plain decimal number (digits 0-9)",
        "  line 9: label 9 out of range (0..2)",
        "  line 10: unknown index -1 (pool indices are 0..999, as in query_<round>.csv)",
        "  line 11: unknown index 1000 (pool indices are 0..999, as in query_<round>.csv)",
        "  line 12: expected 'index,label', got 3 fields '2,1,0'",
    ]
    assert message.splitlines()[0].endswith(
        "rejected, nothing recorded (6 problems); correct these lines and record the file "
        "again:")


def test_a_long_field_is_a_problem_line(session, tmp_path):
    message = rejected(session, tmp_path, b"1,0\n" + b"7" * 65 + b",1\n")
    assert "line 2: index field of 65 characters" in message


def test_a_50_mb_field_is_a_problem_line_not_a_csv_crash(session, tmp_path):
    message = rejected(session, tmp_path, b"1,0\n" + b"7" * 50_000_000 + b",1\n3,1\n")
    assert "line 2: not a CSV row" in message and len(message) < 500


@pytest.mark.slow
def test_two_million_bad_rows_list_20_problems_and_count_the_rest(session, tmp_path):
    message = rejected(session, tmp_path, b"x,y\n" * 2_000_000)
    lines = message.splitlines()
    assert "(2000000 problems)" in lines[0]
    assert lines[1:21] == [f"  line {n}: index 'x' is not a plain decimal number (digits 0-9)"
                           + ("; a header must be exactly 'index,label' or 'pool_index,label'"
                              if n == 1 else "") for n in range(1, 21)]
    assert lines[21:] == ["  ... and 1999980 more problems"]
    assert len(message) < 3_000


def test_text_that_is_not_utf8_names_its_line(session, tmp_path):
    # Past the text layer's first 8 KiB chunk, where its error no longer says the line.
    message = rejected(session, tmp_path, b"index,label\n" + b"\n" * 9000 + b"4,\xe9\n")
    assert message.endswith("answers.csv is not UTF-8 text at line 9002; save it as UTF-8 "
                            "text and record it again")
    assert "\n" not in message


@pytest.mark.parametrize("what, fix", [("directory", "is a directory"),
                                       ("missing", "does not exist")])
def test_a_csv_path_that_is_no_file_is_one_line(session, tmp_path, what, fix):
    path = tmp_path / "answers.csv"
    if what == "directory":
        path.mkdir()
    before = state(session)
    with pytest.raises(LabelError) as err:
        record_labels(session, path)
    assert str(err.value) == f"{path} {fix}; give the CSV file of 'index,label' lines"
    assert state(session) == before


def test_parse_label_csv_takes_text_or_lines():
    assert parse_label_csv("index,label\n0,1\n", 2, 10) == {0: 1}
    assert parse_label_csv(iter(["\ufeff0,1\n", "\n", "1,0\n"]), 2, 10) == {0: 1, 1: 0}


@pytest.mark.parametrize("row, problem", [
    ("3,7", "line 3: label 7 out of range (0..2)"),
    ("-1,0", "line 3: unknown index -1"),
    ("1000,0", "line 3: unknown index 1000"),
    ("0,2", "line 3: duplicate index 0 (line 2 labels it 1)"),
    ("3_0,1", "line 3: index '3_0' is not a plain decimal number"),
    ("3,1,", "line 3: expected 'index,label'"),
])
def test_hand_edited_labels_csv_is_refused_on_every_read(session, tmp_path, row, problem):
    (session / "labels.csv").write_text(f"pool_index,label\n0,1\n{row}\n")
    before = state(session)
    for read in (lambda: read_labels(session),
                 lambda: record_labels(session, tmp_path / "answers.csv")):
        (tmp_path / "answers.csv").write_text("1,0\n")
        with pytest.raises(LabelError) as err:
            read()
        head, *problems = str(err.value).splitlines()
        assert head == f"{session / 'labels.csv'}: 1 bad line; correct or delete that line:"
        assert len(problems) == 1 and problems[0].startswith(f"  {problem}")
    assert state(session) == before


def test_hand_edited_labels_csv_is_refused_by_query(tmp_path):
    propose(tmp_path / "s", CONFIG)
    (tmp_path / "s" / "labels.csv").write_text("pool_index,label\n0,7\n")
    with pytest.raises(LabelError, match=r"labels.csv: 1 bad line; correct or delete that "
                                         r"line:\n  line 2: label 7 out of range \(0..1\)"):
        propose(tmp_path / "s", CONFIG)


BAD_SESSION_JSON = [b"", b"{not json", b"[1, 2]", b"null", b'{"num_pool": 10}', b"\xff\xfe",
                    b'{"experiment": {}, "num_pool": "1000", "num_classes": 3}',
                    b'{"experiment": {}, "num_pool": 1000, "num_classes": true}']


@pytest.mark.parametrize("content", BAD_SESSION_JSON)
def test_a_corrupt_session_json_is_one_line(session, tmp_path, content):
    (session / "session.json").write_bytes(content)
    (tmp_path / "answers.csv").write_text("5,1\n")
    before = state(session)
    for read in (lambda: read_labels(session),
                 lambda: record_labels(session, tmp_path / "answers.csv")):
        with pytest.raises(LabelError) as err:
            read()
        message = str(err.value)
        assert message.startswith(str(session / "session.json")) and "\n" not in message
        assert message.endswith("restore it, or start a new session dir with query")
    assert state(session) == before


def test_a_corrupt_session_json_is_refused_by_query(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "session.json").write_text("[]")
    with pytest.raises(LabelError, match=r"session.json is not a session file"):
        propose(tmp_path / "s", CONFIG)


@pytest.mark.parametrize("content", [
    b"garbage", b"", b"{}", b"[1]", b'{"round": 1, "pool_index": []}',
    b'{"round": 1, "pool_index": ["1"]}', b'{"round": 1, "pool_index": [1000]}',
    b'{"round": 1, "pool_index": [-1]}', b'{"round": 1, "pool_index": [true]}',
    b'{"pool_index": [1]}',
])
def test_a_corrupt_pending_json_is_one_line(session, tmp_path, content):
    (session / "pending.json").write_bytes(content)
    message = rejected(session, tmp_path, b"5,1\n")
    assert message.startswith(str(session / "pending.json")) and "\n" not in message
    assert message.endswith("delete it and run query again")


def test_a_corrupt_pending_json_is_refused_by_oracle_labelling(tmp_path):
    propose(tmp_path / "s", CONFIG)
    (tmp_path / "s" / "pending.json").write_text("{")
    with pytest.raises(LabelError, match=r"pending.json is unreadable .*; delete "
                                         r"it and run query again$"):
        record_oracle_labels(tmp_path / "s", CONFIG)


def test_the_proposal_stays_pending_until_all_its_points_are_labelled(session, tmp_path):
    answers = tmp_path / "answers.csv"
    for rows, still_pending in [("5,0\n", True), ("1,2\n7,1\n", True), ("2,1\n", False)]:
        answers.write_text(rows)
        record_labels(session, answers)
        assert (session / "pending.json").exists() == still_pending
    assert read_labels(session) == {5: 0, 1: 2, 7: 1, 2: 1}


def test_oracle_labels_only_the_unlabelled_points_of_the_proposal(tmp_path):
    proposal = propose(tmp_path / "s", CONFIG)
    first, *rest = proposal.pool_index.tolist()
    split = load_split(CONFIG)
    given = 1 - int(split.pool_y[first])                # a person's label, even a wrong one
    (tmp_path / "answers.csv").write_text(f"{first},{given}\n")
    record_labels(tmp_path / "s", tmp_path / "answers.csv")
    assert (tmp_path / "s" / "pending.json").exists()
    assert record_oracle_labels(tmp_path / "s", CONFIG) == {
        i: int(split.pool_y[i]) for i in rest}
    assert read_labels(tmp_path / "s")[first] == given
    assert not (tmp_path / "s" / "pending.json").exists()


@pytest.mark.parametrize("case", ["directory", "missing", "session.json", "bad rows",
                                  "no --csv"])
def test_cli_errors_are_one_line_on_stderr_with_exit_code_2(session, tmp_path, capsys, case):
    csv_path = tmp_path / "answers.csv"
    csv_path.write_text("5,1\n")
    if case == "directory":
        csv_path.unlink()
        csv_path.mkdir()
    elif case == "missing":
        csv_path.unlink()
    elif case == "session.json":
        (session / "session.json").write_text("{")
    elif case == "bad rows":
        csv_path.write_text("5,1\n5,2\n+6,1\n")
    args = ["label", "--out", str(session)] + ([] if case == "no --csv"
                                               else ["--csv", str(csv_path)])
    with pytest.raises(SystemExit) as exit_:
        label_main(args)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and "Traceback" not in err
    if case == "bad rows":            # a label file lists its problems, one per line
        assert err.splitlines()[1:] == [
            "  line 2: duplicate index 5 (line 1 labels it 1)",
            "  line 3: index '+6' is not a plain decimal number (digits 0-9)"]
    else:
        assert err.count("\n") == 1
