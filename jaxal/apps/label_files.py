"""The files of a labelling session, read, checked and written: session.json, labels.csv,
pending.json and the proposal records. The workflow over them (proposing a batch,
recording labels, a folder that grew) is ``jaxal.apps.labelling``.

A session dir holds

    session.json     the ExperimentConfig of the session (a different one is refused)
    images-<key>.npy an image folder's decoded images (``jaxal.data.image_folder``)
    labels.csv       every label given so far, in the order given: pool_index,label rows
                     (an image folder's: file,label,sha256, below)
    pending.json     the last proposal not yet labelled (round, pool indices; files)
    query_<r>.csv    round r's proposal: pool_index,dataset_index,score (an image folder:
                     pool_index,file,score)
    query_<r>.png    its contact sheet: the images with their pool indices
    proposal_<r>.json  round r's proposal for the labelling page: the batch, its scores
                     and predictive probabilities, the pool's mean predictive entropy, the
                     labels per class, the round's top and bottom scored points

A folder session names each label by the file's relative path and records its content
hash (labels.csv rows ``file,label,sha256``), so the folder may grow between rounds.
Pool indices (in ``index,label`` files, query_<r>.csv, pending.json) are positions in the
file list of the session's last read (session.json ``files``). A folder session begun
before labels were keyed by file (no ``keys`` in session.json) keeps its pool indices
and refuses a folder whose file list changed.

Every label is checked here: a labeller's ``index,label`` file (``read_label_csv``,
``parse_label_csv``), and ``labels.csv`` (which people edit by hand) the same way on
every read. Bad files are rejected with the reason, each problem listed with its line,
and leave the session unchanged.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from jaxal.apps.results import read_json, write_text_atomic
from jaxal.errors import JaxalError
from jaxal.files import open_regular

LABELS = "labels.csv"
PENDING = "pending.json"
SESSION = "session.json"
MAX_PROBLEMS = 20       # problems listed for a bad label file; the rest are counted
MAX_FIELD = 64          # characters in one CSV field; longer is a problem, not a number
# Characters of one line read at most: a longer one (a file without newlines) is a
# problem line, read on in pieces of this size, so a huge file never fills memory.
MAX_LINE = 1 << 20
HEADERS = (("index", "label"), ("pool_index", "label"))
# The header of a folder session's labels.csv, labels keyed by file.
FILE_HEADER = ("file", "label", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Not int(): it also takes '3_41', '+341' and non-ASCII digits such as '３４１'. The '-'
# lets '-1' be reported as out of range rather than as not a number.
_DECIMAL = re.compile(r"-?[0-9]+")


class LabelError(JaxalError, ValueError):
    """A label or session file that cannot be used; the session is left unchanged."""


def read_session(session_dir: Path) -> dict:
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


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)     # JSON true is no index


def _is_count(x) -> bool:
    return _is_int(x) and x >= 1


def keyed_by_file(session: dict) -> bool:
    """Whether the session's labels.csv names files (a folder session begun since)."""
    return session.get("keys") == "file"


def session_files(session: dict) -> tuple[list[str], list[str]]:
    """(files, their sha256) of a keyed session's last read of its folder."""
    files, sha256 = session.get("files"), session.get("files_sha256")
    if not (isinstance(files, list) and isinstance(sha256, list)
            and len(files) == len(sha256) == session["num_pool"]
            and all(isinstance(f, str) for f in files)
            and all(isinstance(h, str) for h in sha256)):
        raise LabelError(f"session.json lists no files of num_pool {session['num_pool']} "
                         "with their sha256; restore it, or start a new session dir with "
                         "query")
    return files, sha256


def session_class_names(session: dict) -> tuple[str, ...]:
    """An image folder session's class names, in label order (none for a TFDS pool)."""
    names = session.get("class_names", ())
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        names = ()
    return tuple(names)


def read_labels(session_dir: str | os.PathLike) -> dict[int, int]:
    """pool_index -> label of every label recorded so far, validated like any input."""
    session_dir = Path(session_dir)
    return session_labels(session_dir, read_session(session_dir))


def session_labels(session_dir: Path, session: dict) -> dict[int, int]:
    """``read_labels`` of a session whose session.json ``session`` is already read."""
    path = session_dir / LABELS
    if not path.exists():
        return {}
    if keyed_by_file(session):
        return _read_file_labels(path, session)
    return read_label_csv(path, session["num_classes"], session["num_pool"],
                          session_file=True, class_names=session_class_names(session))


def _read_file_labels(path: Path, session: dict) -> dict[int, int]:
    """pool_index -> label of a keyed labels.csv (``file,label,sha256`` rows), checked
    like any label file: each problem listed with its line."""
    files, sha256 = session_files(session)
    where = {name: i for i, name in enumerate(files)}
    names, c = session_class_names(session), session["num_classes"]
    labels: dict[int, int] = {}
    problems: list[str] = []
    num_problems = 0
    try:
        raw = open_regular(path, "correct or delete that line", error=LabelError)
        with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="") as f:
            lines = _BoundedLines(f)
            reader = csv.reader(lines)
            while True:
                line = reader.line_num + 1
                try:
                    row = next(reader)
                    problem = ("not a CSV row (a line of more than "
                               f"{MAX_LINE} characters)" if line in lines.overlong else None)
                except StopIteration:
                    break
                except csv.Error as e:
                    row, problem = [], f"not a CSV row ({e})"
                cells = [cell.strip() for cell in row[:4]]
                if problem is None:
                    if not any(cells) or (line == 1 and tuple(cells) == FILE_HEADER):
                        continue
                    problem = _file_row_problem(cells, len(row), where, sha256, names, c,
                                                labels)
                if problem is None:
                    i = where[cells[0]]
                    labels[i] = names.index(cells[1]) if cells[1] in names else int(cells[1])
                    continue
                num_problems += 1
                if len(problems) < MAX_PROBLEMS:
                    problems.append(f"line {line}: {problem}")
    except UnicodeDecodeError:
        raise LabelError(f"{path} is not UTF-8 text at line {_first_non_utf8_line(path)}; "
                         "correct or delete that line") from None
    if problems:
        s = "s" if num_problems > 1 else ""
        more = num_problems - len(problems)
        raise LabelError("\n  ".join(
            [f"{path}: {num_problems} bad line{s}; correct or delete "
             f"{'these lines' if s else 'that line'}:", *problems]
            + ([f"... and {more} more problems"] if more else [])))
    return labels


def _file_row_problem(cells: list[str], num_fields: int, where: dict[str, int],
                      sha256: list[str], names: tuple[str, ...], num_classes: int,
                      labels: dict[int, int]) -> str | None:
    """What is wrong with a keyed labels.csv row, or None."""
    if num_fields != 3:
        return f"expected 'file,label,sha256', got {num_fields} fields"
    name, label, digest = cells
    if name not in where:
        return (f"file {_shown(name)} is not in the session's folder (as last read); "
                "restore it, or delete the line")
    if not (label in names or (_DECIMAL.fullmatch(label) and len(label) <= MAX_FIELD
                               and 0 <= int(label) < num_classes)):
        return (f"label {_shown(label)} is neither a class ({', '.join(names)}) nor a "
                f"class number 0..{num_classes - 1}")
    if not _SHA256.fullmatch(digest):
        return f"sha256 {_shown(digest)} is not 64 hex digits"
    if digest != sha256[where[name]]:
        return (f"{_shown(name)} was replaced since it was labelled (its content changed); "
                "delete the line to label it again")
    if where[name] in labels:
        return f"duplicate file {_shown(name)}"
    return None


def write_labels(session_dir: Path, labels: dict[int, int], session: dict) -> None:
    """Write ``labels`` as the session's labels.csv (atomically), keyed as it keys them."""
    buf = io.StringIO()
    if keyed_by_file(session):
        files, sha256 = session_files(session)
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(FILE_HEADER)
        writer.writerows((files[i], y, sha256[i]) for i, y in labels.items())
    else:
        buf.write("pool_index,label\n")
        buf.writelines(f"{i},{y}\n" for i, y in labels.items())
    write_text_atomic(session_dir / LABELS, buf.getvalue())


def pending_record(session_dir: str | os.PathLike, num_pool: int) -> dict | None:
    """The checked pending.json (round, pool_index, ...), or None when there is none."""
    path = Path(session_dir) / PENDING
    if not path.exists():
        return None
    fix = "delete it and run query again"
    pending = read_json(path, fix, LabelError)
    index = pending.get("pool_index") if isinstance(pending, dict) else None
    if not (isinstance(index, list) and index and _is_count(pending.get("round"))
            and all(_is_int(i) and 0 <= i < num_pool for i in index)):
        raise LabelError(f"{path} is not a proposal (it needs 'round' and 'pool_index', "
                         f"a list of pool indices 0..{num_pool - 1}); {fix}")
    return pending


def pending_indices(session_dir: Path, session: dict) -> list[int] | None:
    """The pool indices of the pending proposal, or None when there is none (a keyed
    session's: of the files it names)."""
    record = pending_record(session_dir, session["num_pool"])
    if record is None:
        return None
    if keyed_by_file(session) and isinstance(record.get("files"), list):
        files, _ = session_files(session)
        where = {name: i for i, name in enumerate(files)}
        if not all(isinstance(f, str) and f in where for f in record["files"]):
            raise LabelError(f"{session_dir / PENDING} names files the session's folder "
                             "does not hold; delete it and run query again")
        return [where[f] for f in record["files"]]
    return record["pool_index"]


def last_proposal(session_dir: str | os.PathLike) -> dict | None:
    """The record of the session's last proposal (``proposal_<r>.json``, checked), or
    None before the first (or in a session begun before jaxal wrote them)."""
    session_dir = Path(session_dir)
    rounds = [int(m.group(1)) for p in session_dir.glob("proposal_*.json")
              if (m := re.fullmatch(r"proposal_([0-9]{1,6})\.json", p.name))]
    if not rounds:
        return None
    path = session_dir / f"proposal_{max(rounds)}.json"
    fix = "delete it and run query again"
    record = read_json(path, fix, LabelError)
    if not (isinstance(record, dict) and _is_count(record.get("round"))
            and isinstance(record.get("pool_index"), list)
            and all(_is_int(i) for i in record["pool_index"])):
        raise LabelError(f"{path} is not a proposal record; {fix}")
    return record


def batch_indices(record: dict, session: dict) -> list[int]:
    """The pool indices of a proposal record now (a keyed session's, by its files)."""
    if keyed_by_file(session) and isinstance(record.get("files"), list):
        files, _ = session_files(session)
        where = {name: i for i, name in enumerate(files)}
        return [where[f] for f in record["files"] if f in where]
    return record["pool_index"]


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
