"""The committed result tables (benchmarks/results/*.md and the marked regions of README.md
and docs/*.md) are what ``python benchmarks/tables.py`` makes from the result JSON: no
training, only reading files and comparing text."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
tables = pytest.importorskip("tables", reason="benchmarks/tables.py")
assert Path(tables.__file__).parent == BENCHMARKS, "another module named tables shadows it"


@pytest.mark.parametrize("path", list(tables.expected_files()), ids=lambda p: p.name)
def test_committed_tables_match_their_result_files(path):
    expected = tables.expected_files()[path]
    assert path.read_text() == expected, (
        f"{path} differs from its result JSON; run python benchmarks/tables.py")


def _regions():
    """(doc, table name, body) of every marked region of README.md and docs/*.md."""
    return [(path.name, m.group("name"), m.group("body")) for path in tables.DOCS
            for m in tables.REGION.finditer(path.read_text())]


def test_every_docs_region_names_a_table_and_its_command():
    regions = _regions()
    assert {"posterior_curves", "cifar10_curves"} <= {name for _, name, _ in regions}
    for doc, name, body in regions:
        assert name in tables.TABLES, f"{doc}: region {name!r} names no table in TABLES"
        assert body.startswith(f"Made by `{tables.TABLES[name].command}`"), (doc, name)


def test_every_marker_opens_a_region_that_closes():
    """A misspelt or unclosed marker (a line of its own) would leave its table unchecked."""
    for path in tables.DOCS:
        text = path.read_text()
        opening = re.findall(r"^<!-- ?table", text, re.M)
        closing = re.findall(r"^<!-- ?/ ?table", text, re.M)
        assert len(opening) == len(closing) == len(tables.REGION.findall(text)), path.name


# The tables of README.md and docs/*.md that list rather than measure: their header rows.
REFERENCE_TABLES = {
    "cli.md": {"| command | what |", "| file | what |",
               "| dataset | initial labels | per round | rounds | training a round | after |"},
    "extending.md": {"| family | record | declares |"},
    "strategies.md": {"| `--acq` | what | needs |"},
}


def test_every_docs_table_is_generated_or_says_why_not():
    """A measured table outside the marked regions must say, just above it, that it is not
    regenerated (its result file is not in the repository); a reference list must be one
    of REFERENCE_TABLES."""
    for path in tables.DOCS:
        lines = tables.REGION.sub("", path.read_text()).splitlines()
        for i, line in enumerate(lines):
            if i == 0 or not line.startswith("|---"):
                continue
            header = lines[i - 1]
            if header in REFERENCE_TABLES.get(path.name, ()):
                continue
            above = " ".join(lines[max(0, i - 8):i - 1])
            assert "is not regenerated" in above, (
                f"{path.name}: the table {header!r} is neither in a <!-- table: NAME --> "
                "region nor says why it is not regenerated")


def test_every_result_table_is_made_from_its_result_file():
    """Each committed results/*.md is one of TABLES (none written by hand), and each
    table's result files are there. (results/ is ignored: a script run here may have left
    an uncommitted table of its own beside them.)"""
    listed = subprocess.run(["git", "ls-files", "results/*.md"], cwd=BENCHMARKS,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: which tables are committed is unknown")
    assert {Path(line).stem for line in listed.stdout.split()} == set(tables.TABLES)
    for name, table in tables.TABLES.items():
        for stem in (table.result or name, *table.needs):
            assert (BENCHMARKS / "results" / f"{stem}.json").exists(), (name, stem)


def test_a_changed_number_in_the_json_shows_in_the_docs(tmp_path):
    """The tables are computed, not copied: a result file's number reaches the text."""
    results = tmp_path / "results"
    shutil.copytree(BENCHMARKS / "results", results,
                    ignore=shutil.ignore_patterns("*.png", "curves*"))
    result = json.loads((results / "posterior_curves.json").read_text())
    result["runs"]["margin-seed0"]["test_accuracy"][-1] = 0.5     # its final acc: 0.961
    (results / "posterior_curves.json").write_text(json.dumps(result))
    doc = tmp_path / "findings.md"
    doc.write_text("before\n<!-- table: posterior_curves -->\nstale\n<!-- /table -->\nafter\n")
    text = tables.expected_files(results, docs=[doc])[doc]
    assert text.startswith("before\n<!-- table: posterior_curves -->\nMade by `")
    assert text.endswith("|\n<!-- /table -->\nafter\n")
    margin = next(line for line in text.splitlines() if line.startswith("| margin "))
    final = [r["test_accuracy"][-1] for k, r in result["runs"].items()
             if k.startswith("margin-seed")]
    assert margin.split(" | ")[5] == f"{sum(final) / len(final):.3f}" != "0.961"


def test_a_table_of_several_result_files_follows_each(tmp_path):
    """map_replay's MAP - random reads the random runs of posterior_curves.json."""
    results = tmp_path / "results"
    shutil.copytree(BENCHMARKS / "results", results,
                    ignore=shutil.ignore_patterns("*.png", "curves*"))
    before = tables.table_of("map_replay", results)
    curves = json.loads((results / "posterior_curves.json").read_text())
    for key, run in curves["runs"].items():
        if key.startswith("random-seed"):
            run["test_accuracy"] = [a - 0.1 for a in run["test_accuracy"]]
    (results / "posterior_curves.json").write_text(json.dumps(curves))
    after = tables.table_of("map_replay", results)
    row = lambda text: next(line for line in text.splitlines()
                            if line.startswith("| plugin-entropy-power-seed0 "))
    assert float(row(after).split(" | ")[-1].rstrip(" |")) == pytest.approx(
        float(row(before).split(" | ")[-1].rstrip(" |")) + 0.1, abs=0.0015)


def test_an_unknown_table_name_is_refused_with_the_names():
    with pytest.raises(ValueError, match="no table 'nope'; the tables are posterior_curves"):
        tables.table_of("nope")
    doc = "<!-- table: nope -->\nold\n<!-- /table -->\n"
    with pytest.raises(ValueError, match="no table 'nope'"):
        tables.rewrite(doc)
