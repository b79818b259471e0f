"""The committed result tables (benchmarks/results/*.md and the marked regions of README.md
and docs/*.md) are what ``python benchmarks/tables.py`` makes from the result JSON: no
training, only reading files and comparing text."""

import json
import shutil
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


def test_every_table_has_a_docs_region_naming_its_command():
    text = "".join(path.read_text() for path in tables.DOCS)
    for name, (_, command) in tables.TABLES.items():
        assert f"<!-- table: {name} -->" in text, name
        region = text.split(f"<!-- table: {name} -->\n", 1)[1].split("<!-- /table -->", 1)[0]
        assert region.startswith(f"Made by `{command}`"), name


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


def test_an_unknown_table_name_is_refused_with_the_names():
    with pytest.raises(ValueError, match="no table 'nope'; the tables are posterior_curves"):
        tables.table_of("nope")
