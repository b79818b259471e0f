"""Real labelling: propose a batch for a pool whose labels are partly unknown, record the
labels a person gives, repeat.

    propose(session_dir, config)              # -> Proposal; writes query_<r>.csv / .png
    record_labels(session_dir, "answers.csv") # index,label rows from the labeller
    record_oracle_labels(session_dir)         # simulation: the dataset's labels

A session dir holds

    session.json     the ExperimentConfig of the session (a different one is refused)
    images-<key>.npy an image folder's decoded images (``jaxal.data.image_folder``)
    labels.csv       pool_index,label of every label given so far, in the order given
    pending.json     the last proposal not yet labelled (round, pool indices)
    query_<r>.csv    round r's proposal: pool_index,dataset_index,score (an image folder:
                     pool_index,file,score)
    query_<r>.png    its contact sheet: the images with their pool indices

The pool is a TFDS dataset's training split, or a folder of the user's own images
(``jaxal.data.image_folder``: unlabelled images plus optional ``class_name/`` subfolders of
labelled ones, which become the session's first labels). A folder's labels may be given
by class name as well as by number; its session records the folder's file list, and a
folder whose files changed is refused (the labels name pool indices of the old list).

Nothing here reads the pool's labels except ``record_oracle_labels`` (simulation, where
the oracle is the ground truth). The validation split's labels are used for the
``val-nll`` prior fit and the reported accuracy, as in any model selection; a pool with
no labelled validation data should use ``--prior-precision auto`` (evidence). Every
proposal is a pure function of the config and the labels so far: rerunning ``propose``
without new labels proposes the same batch. Bad label files are rejected with the reason
and leave the session unchanged; ``labels.csv`` (which people edit by hand) is checked the
same way on every read. A proposal stays pending until each of its points has a label.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.apps.experiment import (
    ExperimentConfig,
    check_config,
    load_split,
    memory_estimate,
    read_folder,
)
from jaxal.apps.results import config_difference, read_json, write_json_atomic, write_text_atomic
from jaxal.config import IMAGE_FOLDER
from jaxal.errors import ConfigError, JaxalError
from jaxal.files import open_regular
from jaxal.loop import ALData, make_learner, train_and_fit, validate_config
from jaxal.model import build_model

LABELS = "labels.csv"
PENDING = "pending.json"
SESSION = "session.json"
MAX_PROBLEMS = 20       # problems listed for a bad label file; the rest are counted
MAX_FIELD = 64          # characters in one CSV field; longer is a problem, not a number
# Characters of one line read at most: a longer one (a file without newlines) is a
# problem line, read on in pieces of this size, so a huge file never fills memory.
MAX_LINE = 1 << 20
# Files a run writes in its out dir: a session dir holding one is a run's, not a session.
RUN_FILES = ("config.json", "checkpoint.npz", "metrics.jsonl")
HEADERS = (("index", "label"), ("pool_index", "label"))
# Not int(): it also takes '3_41', '+341' and non-ASCII digits such as '３４１'. The '-'
# lets '-1' be reported as out of range rather than as not a number.
_DECIMAL = re.compile(r"-?[0-9]+")


class LabelError(JaxalError, ValueError):
    """A label or session file that cannot be used; the session is left unchanged."""


class Proposal(NamedTuple):
    round: int
    pool_index: np.ndarray        # int [k]
    dataset_index: np.ndarray     # int [k], index in the dataset's train split
    scores: np.ndarray            # [k] (NaN for the random first batch)
    num_labels: int               # labels the proposal was made from
    val_accuracy: float | None    # of the model trained on them (None without labels)
    class_names: tuple[str, ...] = ()   # an image folder's classes, label order


def _load(config: ExperimentConfig, session_dir: Path):
    """(split, ImageFolder or None) of the session's pool; a folder's decoded images are
    cached in the session dir (``images-<key>.npy``)."""
    if config.dataset != IMAGE_FOLDER:
        return load_split(config), None
    from jaxal.data.image_folder import folder_split

    folder = read_folder(config, session_dir if session_dir.is_dir() else None)
    return folder_split(folder), folder


def read_labels(session_dir: str | os.PathLike) -> dict[int, int]:
    """pool_index -> label of every label recorded so far, validated like any input."""
    session_dir = Path(session_dir)
    return _labels(session_dir, _session(session_dir))


def _labels(session_dir: Path, session: dict) -> dict[int, int]:
    path = session_dir / LABELS
    if not path.exists():
        return {}
    return read_label_csv(path, session["num_classes"], session["num_pool"],
                          session_file=True, class_names=_class_names(session))


def _class_names(session: dict) -> tuple[str, ...]:
    names = session.get("class_names", ())
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        names = ()
    return tuple(names)


def _write_labels(session_dir: Path, labels: dict[int, int]) -> None:
    buf = io.StringIO()
    buf.write("pool_index,label\n")
    buf.writelines(f"{i},{y}\n" for i, y in labels.items())
    write_text_atomic(session_dir / LABELS, buf.getvalue())


def open_session(session_dir: str | os.PathLike, config: ExperimentConfig, split,
                 folder=None) -> Path:
    """Create the session dir for ``config``, or check that it was made by the same one
    (and, for an image ``folder``, on the same files). A new folder session starts with
    the labels of its class subfolders."""
    session_dir = Path(session_dir)
    if run_file := next((f for f in RUN_FILES if (session_dir / f).exists()), None):
        raise LabelError(f"{session_dir} holds a run of python -m jaxal.run ({run_file}); "
                         "a labelling session needs its own dir: choose another --out")
    if folder is not None and Path(config.data_dir).resolve() in (
            session_dir.resolve(), *session_dir.resolve().parents):
        raise ConfigError(f"session dir {session_dir} is inside --images {config.data_dir}, "
                          "where it would be read as a class folder; put it elsewhere")
    try:
        session_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LabelError(f"cannot use {session_dir} as a session dir ({e.strerror}); "
                         "choose another --out") from None
    path = session_dir / SESSION
    new = json.loads(json.dumps(config.to_dict()))
    if path.exists():
        diffs = config_difference(_session(session_dir)["experiment"], new)
        if diffs:
            shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more"
                                             if len(diffs) > 3 else "")
            raise ConfigError(f"{session_dir} is a session with another configuration "
                              f"({shown}); use the same options, or another session dir")
        if folder is not None and _session(session_dir).get("files_digest") != folder.digest:
            raise ConfigError(
                f"the images in {config.data_dir} changed since session {session_dir} began "
                f"(now {len(folder.files)} files); its labels name pool indices of the old "
                "file list: restore the folder, or start another session dir")
        if folder is not None:
            _check_contents(session_dir, folder, config.data_dir)
    else:
        session = {"experiment": new, "num_pool": int(split.pool_x.shape[0]),
                   "num_classes": int(split.num_classes)}
        if folder is not None:
            session |= {"class_names": list(folder.class_names),
                        "files_digest": folder.digest, "files_sha256": list(folder.sha256)}
            given = {int(i): int(y) for i, y in enumerate(folder.labels) if y >= 0}
            if given:
                _write_labels(session_dir, given)
        write_json_atomic(path, session)
    return session_dir


def _check_contents(session_dir: Path, folder, images_dir) -> None:
    """Refuse a folder whose image under a name the session knows was replaced: its label
    or the pending proposal is of the old image. (A session begun before jaxal recorded
    the contents has nothing to compare.)"""
    recorded = _session(session_dir).get("files_sha256")
    if not isinstance(recorded, list) or len(recorded) != len(folder.files):
        return
    changed = [name for name, old, new in zip(folder.files, recorded, folder.sha256,
                                              strict=True) if old != new]
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise ConfigError(
            f"{Path(images_dir) / changed[0]}{more} changed content since session "
            f"{session_dir} began; its labels and pending proposal are of the old image: "
            "restore it, or start another session dir")


def _session(session_dir: Path) -> dict:
    """The checked contents of session.json."""
    path = session_dir / SESSION
    if not path.exists():
        raise LabelError(f"{session_dir} is not a labelling session (no {SESSION}); "
                         "start one with query")
    fix = "restore it, or start a new session dir with query"
    session = read_json(path, fix, LabelError)
    if not (isinstance(session, dict) and isinstance(session.get("experiment"), dict)
            and _is_count(session.get("num_pool"))
            and _is_count(session.get("num_classes"))):
        raise LabelError(f"{path} is not a session file (it needs 'experiment', "
                         f"'num_pool' and 'num_classes'); {fix}")
    return session


def _pending(session_dir: Path, num_pool: int) -> list[int] | None:
    """The pool indices of the pending proposal, or None when there is none."""
    path = session_dir / PENDING
    if not path.exists():
        return None
    fix = "delete it and run query again"
    pending = read_json(path, fix, LabelError)
    index = pending.get("pool_index") if isinstance(pending, dict) else None
    if not (isinstance(index, list) and index and _is_count(pending.get("round"))
            and all(_is_int(i) and 0 <= i < num_pool for i in index)):
        raise LabelError(f"{path} is not a proposal (it needs 'round' and 'pool_index', "
                         f"a list of pool indices 0..{num_pool - 1}); {fix}")
    return index


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)     # JSON true is no index


def _is_count(x) -> bool:
    return _is_int(x) and x >= 1


def propose(session_dir: str | os.PathLike, config: ExperimentConfig) -> Proposal:
    """The next batch of ``config.al.query_size`` pool points to label.

    Without labels: a seeded uniformly random batch (no model can be trained yet). With
    labels: θ_MAP on them, the configured posterior and acquisition, exactly as one round
    of ``jaxal.loop.al_round`` would query.
    """
    check_config(config)
    split, folder = _load(config, Path(session_dir))
    session_dir = open_session(session_dir, config, split, folder)
    if folder is not None:
        from jaxal.data.image_folder import save_cache

        save_cache(folder, session_dir)
    labels = read_labels(session_dir)
    _pending(session_dir, split.pool_x.shape[0])         # a corrupt one is refused here
    n, k = split.pool_x.shape[0], config.al.query_size
    if len(labels) + k > n:
        raise ConfigError(f"{len(labels)} labelled + a query of {k} exceeds the pool of {n}")
    round_ = _num_rounds(session_dir) + 1
    key = jax.random.fold_in(jax.random.key(config.seed), len(labels))
    labelled = np.zeros(n, bool)
    labelled[list(labels)] = True
    if not labels:
        idx = np.asarray(jax.random.choice(key, n, (k,), replace=False))
        scores, val_accuracy = np.full(k, np.nan), None
    else:
        idx, scores, val_accuracy = _query(key, config, split, labels, labelled)
    proposal = Proposal(round_, idx, split.pool_index[idx], scores, len(labels),
                        val_accuracy, folder.class_names if folder is not None else ())
    _write_proposal(session_dir, proposal, split, folder)
    return proposal


def _num_rounds(session_dir: Path) -> int:
    return len(list(session_dir.glob("query_*.csv"))) - (session_dir / PENDING).exists()


def _query(key, config: ExperimentConfig, split, labels: dict[int, int], labelled):
    """(pool indices, scores, validation accuracy) of the batch the loop's next round
    would query, with the session's labels in place of the oracle's."""
    n, c, k = split.pool_x.shape[0], split.num_classes, config.al.query_size
    # A static bound on the labelled set: the labels so far plus this query (``propose``
    # checked that it fits the pool), rounded up to whole queries after one label per
    # class, the bound proposals have always been computed with (so a session's pending
    # proposal is the same after an upgrade).
    capacity = c + math.ceil(max(len(labels) + k - c, 0) / k) * k
    validate_config(config.al)
    model = build_model(config.dataset, c, config.al)
    memory_estimate(config.al, model, split)   # refused before any work if too large
    learner = make_learner(model, config.al, split.pool_x.shape[1:], c, capacity=capacity)
    # Labels the person gave; unlabelled entries are never read (padding repeats a
    # labelled index), so they stay 0.
    y = np.zeros(n, np.int32)
    y[list(labels)] = list(labels.values())
    val_x, val_y = jnp.asarray(split.val_x), jnp.asarray(split.val_y)
    # No test set: a proposal reports the validation accuracy only.
    data = ALData(jnp.asarray(split.pool_x), jnp.asarray(y), val_x, val_y, val_x[:0],
                  val_y[:0], c)
    labelled = jnp.asarray(labelled)
    key_init, key_train, key_fit, key_query = jax.random.split(key, 4)
    # The loop's own training and posterior fit; then the query of its next round.
    _, _, posterior, _ = train_and_fit(key_train, key_fit, learner, data,
                                       learner.init(key_init), labelled)
    query = learner.query(key_query, posterior, data.pool_x, labelled)
    # An image folder has no validation labels: no accuracy to report.
    val_accuracy = (float(learner.evaluate(key_query, posterior, val_x, val_y)[1])
                    if len(val_y) else None)
    return (np.asarray(query.indices), np.asarray(query.scores, np.float64), val_accuracy)


def _write_proposal(session_dir: Path, proposal: Proposal, split, folder=None) -> None:
    # A folder's rows name the file (quoted by csv where its name needs it).
    where = (proposal.dataset_index.tolist() if folder is None else
             [folder.files[i] for i in proposal.pool_index.tolist()])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("pool_index", "dataset_index" if folder is None else "file", "score"))
    writer.writerows((i, d, repr(s)) for i, d, s in zip(
        proposal.pool_index.tolist(), where, proposal.scores.tolist(), strict=True))
    write_text_atomic(session_dir / f"query_{proposal.round}.csv", buf.getvalue())
    if split.pool_x.ndim == 4:
        images = (split.pool_x[proposal.pool_index] if folder is None else
                  folder.images[proposal.pool_index] / np.float32(255))
        contact_sheet(images, proposal.pool_index,
                      session_dir / f"query_{proposal.round}.png",
                      f"round {proposal.round}: label these {len(proposal.pool_index)} "
                      f"images (from {proposal.num_labels} labels)")
    write_json_atomic(session_dir / PENDING, {
        "round": proposal.round, "pool_index": proposal.pool_index.tolist()})


def contact_sheet(images: np.ndarray, pool_index: np.ndarray, path: Path, title: str
                  ) -> None:
    """A grid of the images, each titled with its pool index (what the labeller types)."""
    from jaxal.apps.plots import save_figure, subplots

    cols = min(len(images), 10)
    rows = -(-len(images) // cols)
    fig, axes = subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, i in zip(axes.flat, images, pool_index, strict=False):
        image = np.asarray(image, np.float32)
        ax.imshow(np.clip(image[..., 0] if image.shape[-1] == 1 else image, 0, 1),
                  cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(f"index {int(i)}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=100)


def parse_label_csv(lines: str | Iterable[str], num_classes: int, num_pool: int,
                    known: Mapping[int, int] | None = None, *, source: str = "label file",
                    session_file: bool = False, class_names: tuple[str, ...] = ()
                    ) -> dict[int, int]:
    """Validated pool_index -> label rows of ``index,label`` CSV lines.

    The one check of every label, from a labeller's file or the session's labels.csv.
    A first row ``index,label`` or ``pool_index,label`` is a header; any other row is
    data: a pool index and a class, each plain ASCII decimal. The lines are read one at
    a time and the first ``MAX_PROBLEMS`` problems are listed with their line numbers
    (1-based, counting header and blank lines), so a huge bad file costs little.

    Args:
        lines: the text, or an iterable of its lines (an open file).
        known: labels recorded before; relabelling one of them is a problem.
        source: how the message names the file.
        session_file: the message asks to correct or delete lines of labels.csv rather
            than to record the file again.
        class_names: a label may also be one of these names (an image folder's classes),
            meaning its position.

    Raises:
        LabelError: listing the problems; nothing has been recorded.
    """
    known = {} if known is None else known
    if isinstance(lines, str):
        lines = io.StringIO(lines, newline="")
    lines = _BoundedLines(lines)
    reader = csv.reader(lines)
    new: dict[int, int] = {}
    first_line: dict[int, int] = {}
    problems: list[str] = []
    num_problems = 0
    header_allowed = True
    while True:
        line = reader.line_num + 1          # a row that spans lines starts here
        try:
            row = next(reader)
            if line in lines.overlong:
                raise csv.Error(f"a line of more than {MAX_LINE} characters")
        except StopIteration:
            break
        except csv.Error as e:              # e.g. a field over csv.field_size_limit()
            problem = f"not a CSV row ({e})"
        else:
            # The BOM: parse_label_csv may get text that did not come through utf-8-sig.
            # Three cells tell a bad row; a line of a million commas is not copied.
            cells = [cell.strip().lstrip("\ufeff").strip() for cell in row[:3]]
            if not any(cells):
                continue                    # a blank line
            is_first, header_allowed = header_allowed, False
            if is_first and tuple(cells) in HEADERS:
                continue
            if len(cells) > 1 and cells[1] in class_names:
                cells[1] = str(class_names.index(cells[1]))
            problem = _row_problem(cells, len(row), num_classes, num_pool, known, new,
                                   first_line, class_names)
            if problem is None:
                new[int(cells[0])] = int(cells[1])
                first_line[int(cells[0])] = line
                continue
            if is_first and not all(_DECIMAL.fullmatch(cell) for cell in cells):
                problem += "; a header must be exactly 'index,label' or 'pool_index,label'"
        num_problems += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append(f"line {line}: {problem}")
    if problems:
        s = "s" if num_problems > 1 else ""
        these = "these lines" if num_problems > 1 else "that line"
        head = (f"{source}: {num_problems} bad line{s}; correct or delete {these}:"
                if session_file else
                f"{source} rejected, nothing recorded ({num_problems} problem{s}); "
                f"correct {these} and record the file again:")
        more = num_problems - len(problems)
        raise LabelError("\n  ".join([head, *problems]
                                      + ([f"... and {more} more problems"] if more else [])))
    return new


class _BoundedLines:
    """The lines of a text file (or any iterable of lines), none longer than MAX_LINE:
    the rest of a longer one is read in pieces and dropped, and the line (numbered in
    ``overlong``, and given to csv as blank) is a problem line."""

    def __init__(self, lines: Iterable[str]):
        self._readline = getattr(lines, "readline", None)
        self._lines = iter(lines) if self._readline is None else None
        self.overlong: set[int] = set()
        self._count = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._readline is None:
            line = next(self._lines)
        else:
            line = self._readline(MAX_LINE + 1)
            if not line:
                raise StopIteration
        self._count += 1
        if len(line) > MAX_LINE:
            while self._readline is not None and line and not line.endswith(("\n", "\r")):
                line = self._readline(MAX_LINE)
            self.overlong.add(self._count)
            return "\n"
        return line


def _row_problem(cells: list[str], num_fields: int, num_classes: int, num_pool: int,
                 known: Mapping[int, int], new: dict[int, int], first_line: dict[int, int],
                 class_names: tuple[str, ...] = ()) -> str | None:
    """What is wrong with a row of ``num_fields`` fields, the first ones ``cells``
    (stripped), or None."""
    if num_fields != 2:
        return f"expected 'index,label', got {num_fields} fields {_shown(','.join(cells))}"
    for name, cell in zip(("index", "label"), cells, strict=True):
        if len(cell) > MAX_FIELD:
            return f"{name} field of {len(cell)} characters, expected a number"
        if not _DECIMAL.fullmatch(cell):
            if name == "label" and class_names:
                return (f"label {_shown(cell)} is neither a class ({', '.join(class_names)})"
                        f" nor a class number 0..{num_classes - 1}")
            return f"{name} {_shown(cell)} is not a plain decimal number (digits 0-9)"
    i, y = int(cells[0]), int(cells[1])
    if not 0 <= i < num_pool:
        return (f"unknown index {i} (pool indices are 0..{num_pool - 1}, as in "
                "query_<round>.csv)")
    if not 0 <= y < num_classes:
        names = f": {', '.join(class_names)}" if class_names else ""
        return f"label {y} out of range (0..{num_classes - 1}{names})"
    if i in new:
        return f"duplicate index {i} (line {first_line[i]} labels it {new[i]})"
    if i in known:
        return f"index {i} is already labelled {known[i]}"
    return None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 24 else text[:24] + "...")


def read_label_csv(path: str | os.PathLike, num_classes: int, num_pool: int,
                   known: Mapping[int, int] | None = None, *, session_file: bool = False,
                   class_names: tuple[str, ...] = ()) -> dict[int, int]:
    """``parse_label_csv`` of a file, streamed; an unreadable file is a one-line
    ``LabelError`` that names it."""
    path = Path(path)
    fix = ("correct or delete that line" if session_file
           else "save it as UTF-8 text and record it again")
    try:
        # A FIFO or device (/dev/zero) is refused unread; a huge file is read line by
        # line, each at most MAX_LINE characters (parse_label_csv).
        raw = open_regular(path, "give the CSV file of 'index,label' lines", error=LabelError)
        # utf-8-sig drops a BOM (spreadsheets write one); newline="" as csv asks.
        with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="") as f:
            return parse_label_csv(f, num_classes, num_pool, known, source=str(path),
                                   session_file=session_file, class_names=class_names)
    except UnicodeDecodeError:
        raise LabelError(f"{path} is not UTF-8 text at line {_first_non_utf8_line(path)}"
                         f"; {fix}") from None
    except IsADirectoryError:
        raise LabelError(f"{path} is a directory; give the CSV file of 'index,label' "
                         "lines") from None
    except FileNotFoundError:
        raise LabelError(f"{path} does not exist; give the CSV file of 'index,label' "
                         "lines") from None
    except OSError as e:
        raise LabelError(f"{path} cannot be read ({e.strerror}); check the path and its "
                         "permissions") from None


def _first_non_utf8_line(path: Path) -> int:
    # The text layer decodes in chunks, so its error does not say which line; UTF-8
    # never has a newline byte inside a character, so lines decode one by one.
    line = 0
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line
    return line


def record_labels(session_dir: str | os.PathLike, csv_path: str | os.PathLike
                  ) -> dict[int, int]:
    """Add the labels of ``csv_path`` to the session; returns the new ones.

    All rows are checked before anything is written; the update is atomic. Any pool
    point may be labelled; the pending proposal stays until all its points are.
    """
    session_dir = Path(session_dir)
    session = _session(session_dir)
    known = _labels(session_dir, session)
    pending = _pending(session_dir, session["num_pool"])
    new = read_label_csv(csv_path, session["num_classes"], session["num_pool"], known,
                         class_names=_class_names(session))
    if not new:
        raise LabelError(f"{csv_path} has no labels; write one 'index,label' line per "
                         "labelled pool index (as in query_<round>.csv)")
    _commit(session_dir, {**known, **new}, pending)
    return new


def record_oracle_labels(session_dir: str | os.PathLike, config: ExperimentConfig
                         ) -> dict[int, int]:
    """Simulation: label the pending proposal's unlabelled points with the dataset's
    own labels."""
    if config.dataset == IMAGE_FOLDER:
        raise ConfigError("an image folder has no oracle: nobody knows its labels; label "
                          "the proposal with --csv FILE (index,label rows)")
    split = load_split(config)
    session_dir = open_session(session_dir, config, split)
    session = _session(session_dir)
    known = _labels(session_dir, session)
    pending = _pending(session_dir, session["num_pool"])
    if pending is None:
        raise LabelError(f"{session_dir} has no pending proposal; run query first")
    new = {int(i): int(split.pool_y[i]) for i in pending if i not in known}
    _commit(session_dir, {**known, **new}, pending)
    return new


def _commit(session_dir: Path, labels: dict[int, int], pending: list[int] | None) -> None:
    _write_labels(session_dir, labels)
    # Labels for other points do not answer the proposal; query would otherwise number
    # the next round as if it had been.
    if pending is not None and all(i in labels for i in pending):
        (session_dir / PENDING).unlink(missing_ok=True)
