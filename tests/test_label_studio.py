"""Label Studio interchange: the pending batch exported as tasks in Label Studio's format
(fields and types as in a stored example export, highest score first), and that example
export imported back as labels with the checks of a CSV label file."""

import json
import shutil
from pathlib import Path

import pytest
from labelling_session import folder_config, make_photos

from jaxal.apps.label_files import LabelError, read_labels
from jaxal.apps.label_studio import export_tasks, import_labels
from jaxal.apps.labelling import propose
from jaxal.cli.label import main as label_main

EXAMPLE = Path(__file__).parent / "data" / "label_studio_export.json"


@pytest.fixture
def session(tmp_path):
    """A folder session (12 images, cat and dog) with its first batch pending, its
    proposal record given scores and probabilities as a trained round's would be."""
    photos = make_photos(tmp_path / "photos")
    session = tmp_path / "session"
    propose(session, folder_config(photos, session))
    (record_path,) = session.glob("proposal_*.json")
    record = json.loads(record_path.read_text())
    record["scores"] = [0.2, 0.9, 0.5]
    record["probs"] = [[0.7, 0.3], [0.45, 0.55], [0.6, 0.4]]
    record_path.write_text(json.dumps(record))
    return session


def kinds(value):
    """The JSON types of a value, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return {k: kinds(v) for k, v in value.items()}
    if isinstance(value, list):
        return [kinds(value[0])] if value else []
    return type(value).__name__


def test_export_is_label_studio_tasks_highest_score_first(session, tmp_path):
    tasks = export_tasks(session, tmp_path / "tasks.json")
    assert json.loads((tmp_path / "tasks.json").read_text()) == tasks
    pending = json.loads((session / "pending.json").read_text())
    by_score = [pending["files"][k] for k in (1, 2, 0)]
    assert [t["data"]["jaxal_file"] for t in tasks] == by_score
    assert [t["data"]["jaxal_score"] for t in tasks] == [0.9, 0.5, 0.2]
    # The fields and types of Label Studio's tasks, as in the stored export.
    example = json.loads(EXAMPLE.read_text())[0]
    for task in tasks:
        assert set(task) == {"data", "predictions"}
        assert kinds(task["data"]) == kinds(example["data"])
        assert task["data"]["image"] == f"/data/local-files/?d={task['data']['jaxal_file']}"
        (prediction,) = task["predictions"]
        shape = {k: v for k, v in kinds(example["predictions"][0]).items()
                 if k in ("model_version", "score", "result")}
        assert kinds(prediction) == shape
    assert tasks[0]["predictions"][0]["result"][0]["value"] == {"choices": ["dog"]}
    assert tasks[0]["predictions"][0]["score"] == 0.55
    config = (tmp_path / "tasks.label_config.xml").read_text()
    assert '<Choices name="label" toName="image"' in config
    assert '<Choice value="cat"/>' in config and '<Image name="image" value="$image"/>' in config


def test_the_stored_example_export_imports_and_round_trips(session, tmp_path):
    files = json.loads((session / "session.json").read_text())["files"]
    new = import_labels(session, EXAMPLE)
    # img_01 was relabelled dog; img_02 is found by its URL; img_03 is not annotated,
    # img_04's only annotation was cancelled.
    assert new == {files.index("img_00.png"): 0, files.index("img_01.png"): 1,
                   files.index("img_02.png"): 0}
    assert read_labels(session) == new
    with pytest.raises(LabelError, match="no annotated task that is not recorded yet"):
        import_labels(session, EXAMPLE)          # imported before: nothing new
    # An export of the tasks Label Studio annotated comes back the same way.
    tasks = export_tasks(session, tmp_path / "tasks.json")
    for k, task in enumerate(tasks):
        task |= {"id": 100 + k, "annotations": [{"id": k, "result": [{
            "from_name": "label", "to_name": "image", "type": "choices",
            "value": task["predictions"][0]["result"][0]["value"]}],
            "was_cancelled": False}]}
    (tmp_path / "annotated.json").write_text(json.dumps(tasks))
    back = import_labels(session, tmp_path / "annotated.json")
    assert back == {files.index(t["data"]["jaxal_file"]): ["cat", "dog"].index(
        t["predictions"][0]["result"][0]["value"]["choices"][0]) for t in tasks}


@pytest.mark.parametrize("change, message", [
    (lambda tasks: tasks[0]["annotations"][0]["result"][0]["value"].update(
        choices=["horse"]), "label 'horse' is neither a class (cat, dog)"),
    (lambda tasks: tasks[2]["data"].update(image="/data/upload/3/other.png"),
     "task 3 (id 3): names no image of the session's folder"),
    (lambda tasks: tasks[0]["data"].update(jaxal_file="../../etc/passwd"),
     "task 1 (id 1): names no image of the session's folder"),
    (lambda tasks: tasks[0]["annotations"][0]["result"][0]["value"].update(
        choices=["cat", "dog"]), "does not choose exactly one class"),
    (lambda tasks: tasks.append("not a task"), "task 6: not a task"),
])
def test_a_bad_export_is_rejected_and_records_nothing(session, tmp_path, change, message):
    tasks = json.loads(EXAMPLE.read_text())
    change(tasks)
    (tmp_path / "bad.json").write_text(json.dumps(tasks))
    before = {p.name: p.read_bytes() for p in session.iterdir()}
    with pytest.raises(LabelError, match="nothing recorded") as err:
        import_labels(session, tmp_path / "bad.json")
    assert message in str(err.value)
    assert {p.name: p.read_bytes() for p in session.iterdir()} == before


def test_export_and_import_from_the_command_line(session, tmp_path, capsys):
    label_main(["export", "--out", str(session), "--format", "label-studio", "--to",
                str(tmp_path / "t.json"), "--image-prefix", "/data/local-files/?d=photos/"])
    out = capsys.readouterr().out
    assert out.startswith(f"wrote 3 Label Studio tasks to {tmp_path / 't.json'}")
    assert json.loads((tmp_path / "t.json").read_text())[0]["data"]["image"].startswith(
        "/data/local-files/?d=photos/img_")
    shutil.copy(EXAMPLE, tmp_path / "export.json")
    label_main(["import", "--out", str(session), "--from", str(tmp_path / "export.json")])
    assert "recorded 3 labels from" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit) as exit_:
        label_main(["import", "--out", str(session), "--from", str(tmp_path / "bad.json")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not JSON" in err and err.count("\n") == 1
