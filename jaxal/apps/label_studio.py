"""Label Studio interchange: the pending batch out as Label Studio tasks, a Label Studio
JSON export back in as labels.

    python -m jaxal.label export --out runs/mine --format label-studio --to tasks.json
    python -m jaxal.label import --out runs/mine --from export.json

``export_tasks`` writes one task per point of the pending batch, highest acquisition
score first, in Label Studio's task format (``data`` with the image, ``predictions``
with jaxal's predicted class as a ``choices`` result, its probability as the
prediction's ``score``); ``data.jaxal_*`` keep the pool index, file, round and
acquisition score, which is how ``import_labels`` finds a task's point again. The image
is ``image_prefix`` + the file's path in the folder (URL-quoted); the default suits
Label Studio's local file serving with the image folder as its document root. A TFDS
session's tasks carry the pool index only (no image file to point at). Beside the
tasks, a labelling config (``<Choices name="label" toName="image">``, one ``<Choice>``
per class) to paste into the project.

``import_labels`` reads an export (JSON, a list of tasks) and records, for each task,
the class chosen in its last annotation that was not cancelled, through
``record_label_rows``: the checks of a CSV label file (unknown class, a point labelled
before with another class, ...), nothing recorded if any fails. A task of a point that
already has the same label is skipped, so the same export can be imported again.
Nothing here imports JAX.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import quoteattr

from jaxal.apps.label_files import (
    MAX_PROBLEMS,
    LabelError,
    batch_indices,
    last_proposal,
    pending_indices,
    read_labels,
    read_session,
    session_class_names,
)
from jaxal.apps.labelling import record_label_rows
from jaxal.apps.results import write_text_atomic
from jaxal.files import loads_json, read_bytes

DEFAULT_PREFIX = "/data/local-files/?d="
MAX_EXPORT_BYTES = 256 << 20     # a Label Studio export read at most
FROM_NAME, TO_NAME = "label", "image"


def label_config(class_names: list[str]) -> str:
    """The Label Studio labelling config of a session's classes."""
    choices = "".join(f"\n    <Choice value={quoteattr(n)}/>" for n in class_names)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n  <Choices '
            f'name="{FROM_NAME}" toName="{TO_NAME}" choice="single">{choices}\n  '
            "</Choices>\n</View>\n")


def export_tasks(session_dir: str | os.PathLike, path: str | os.PathLike,
                 image_prefix: str = DEFAULT_PREFIX) -> list[dict]:
    """Write the pending batch's unlabelled points to ``path`` as Label Studio tasks
    (and ``<path stem>.label_config.xml``); returns the tasks."""
    session_dir = Path(session_dir)
    session = read_session(session_dir)
    pending = pending_indices(session_dir, session)
    if pending is None:
        raise LabelError(f"{session_dir} has no pending proposal; run query (or train "
                         "and query in the page) first")
    labels = read_labels(session_dir)
    record = last_proposal(session_dir)
    names = (list(session_class_names(session))
             or [str(y) for y in range(session["num_classes"])])
    files = session.get("files")
    index = [] if record is None else batch_indices(record, session)
    tasks = []
    for i in pending:
        if i in labels:
            continue
        k = index.index(i) if i in index else None
        score = None if k is None else record["scores"][k]
        probs = None if k is None or record.get("probs") is None else record["probs"][k]
        data = {"jaxal_pool_index": i, "jaxal_round": None if record is None
                else record["round"], "jaxal_score": score}
        if isinstance(files, list):
            data["jaxal_file"] = files[i]
            data["image"] = image_prefix + quote(files[i])
        elif record is not None and k is not None:
            data["jaxal_dataset_index"] = record["dataset_index"][k]
        task = {"data": data}
        if probs is not None:
            y = max(range(len(probs)), key=lambda c: probs[c] or 0.0)
            task["predictions"] = [{
                "model_version": f"jaxal round {record['round']}",
                "score": probs[y],
                "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                            "value": {"choices": [names[y]]}}]}]
        tasks.append(task)
    # Highest acquisition score first (the random first batch: as proposed).
    tasks.sort(key=lambda t: -(t["data"]["jaxal_score"] if isinstance(
        t["data"]["jaxal_score"], float) and math.isfinite(t["data"]["jaxal_score"])
        else -math.inf))
    path = Path(path)
    write_text_atomic(path, json.dumps(tasks, indent=1) + "\n")
    write_text_atomic(path.with_name(path.stem + ".label_config.xml"), label_config(names))
    return tasks


def import_labels(session_dir: str | os.PathLike, path: str | os.PathLike
                  ) -> dict[int, int]:
    """Record the labels of a Label Studio JSON export; returns the new ones.

    Raises:
        LabelError: the file is not a Label Studio export (the problems listed by task),
            or a label fails the checks of ``record_labels``; nothing recorded then.
    """
    session_dir = Path(session_dir)
    session = read_session(session_dir)
    try:
        tasks = loads_json(read_bytes(path, "give the JSON file Label Studio exported",
                                      max_bytes=MAX_EXPORT_BYTES, error=LabelError))
    except FileNotFoundError:
        raise LabelError(f"{path} does not exist; give the JSON file Label Studio "
                         "exported") from None
    except ValueError as e:
        raise LabelError(f"{path} is not JSON ({e}); export the project as JSON "
                         "(not JSON-MIN or CSV)") from None
    if not isinstance(tasks, list):
        raise LabelError(f"{path} is not a Label Studio JSON export (a list of tasks); "
                         "export the project as JSON")
    files = session.get("files")
    where = {n: i for i, n in enumerate(files)} if isinstance(files, list) else {}
    known = read_labels(session_dir)
    names = session_class_names(session)
    rows, problems = [], []
    for t, task in enumerate(tasks, start=1):
        what = f"task {t}" + (f" (id {task['id']})" if isinstance(task, dict)
                              and isinstance(task.get("id"), int) else "")
        try:
            choice = _choice(task)
            if choice is None:
                continue           # not annotated (or only cancelled): not labelled yet
            i = _pool_index(task, where, session["num_pool"])
        except ValueError as e:
            problems.append(f"{what}: {e}")
            continue
        if i in known and names and choice in names and known[i] == names.index(choice):
            continue               # imported before
        rows.append((i, choice))
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise LabelError("\n  ".join(
            [f"{path} rejected, nothing recorded ({len(problems)} problem"
             f"{'s' if len(problems) > 1 else ''}):", *problems[:MAX_PROBLEMS]]
            + ([f"... and {more} more problems"] if more > 0 else [])))
    if not rows:
        raise LabelError(f"{path} has no annotated task that is not recorded yet; "
                         "annotate the tasks in Label Studio and export again")
    return record_label_rows(session_dir, rows, source=str(path))


def _choice(task) -> str | None:
    """The class chosen in the task's last annotation that was not cancelled."""
    if not isinstance(task, dict):
        raise ValueError("not a task (a JSON object)")
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError("'annotations' is not a list")
    done = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not done:
        return None
    result = done[-1].get("result")
    if not isinstance(result, list):
        raise ValueError("its annotation has no 'result' list")
    choices = [r.get("value", {}).get("choices") for r in result
               if isinstance(r, dict) and r.get("type") == "choices"
               and isinstance(r.get("value"), dict)]
    if not choices:
        return None if not result else _raise("its annotation has no choices result")
    if len(choices) > 1 or not isinstance(choices[0], list) or len(choices[0]) != 1 \
            or not isinstance(choices[0][0], str):
        raise ValueError("its annotation does not choose exactly one class")
    return choices[0][0]


def _raise(message: str):
    raise ValueError(message)


def _pool_index(task: dict, where: dict[str, int], num_pool: int) -> int:
    """The pool index of a task: its ``jaxal_file`` (a folder session), else its
    ``jaxal_pool_index``, else the file its image URL names."""
    data = task.get("data")
    if not isinstance(data, dict):
        raise ValueError("no 'data' object")
    if where:
        name = data.get("jaxal_file")
        if name is None and isinstance(data.get("image"), str):
            name = _file_of_url(data["image"], where)
        if not isinstance(name, str) or name not in where:
            raise ValueError(f"names no image of the session's folder "
                             f"({str(name)[:80]!r})")
        return where[name]
    i = data.get("jaxal_pool_index")
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_pool:
        raise ValueError(f"no jaxal_pool_index 0..{num_pool - 1} in its data")
    return i


def _file_of_url(url: str, where: dict[str, int]) -> str | None:
    """The one folder file a Label Studio image URL ends with (``?d=...`` of local
    files, or the URL's path), or None."""
    parts = urlsplit(url)
    path = parse_qs(parts.query).get("d", [unquote(parts.path)])[0]
    matches = [n for n in where if path == n or path.endswith("/" + n)]
    return matches[0] if len(matches) == 1 else None
