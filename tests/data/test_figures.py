"""The generated block of docs/DATA.md: slice counts and vertebra HU come from results/data/summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctxstyle.data import figures
from ctxstyle.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def test_data_doc_block_is_the_committed_summary():
    summary = json.loads((REPO / "results" / "data" / "summary.json").read_text())
    block = figures.data_doc_block(summary)
    assert block in (REPO / "docs" / "DATA.md").read_text(encoding="utf-8"), \
        "docs/DATA.md's generated block is stale: run `ctxstyle data figures`"
    for plane, row in summary["slice_counts_128"].items():
        assert f"| {plane} | " + " | ".join(map(str, row.values())) + f" | {sum(row.values())} |" in block


def test_update_replaces_only_the_block_and_refuses_a_file_without_one(tmp_path):
    summary = {"slice_counts_128": {"axial": {"a": 3, "b": 4}},
               "hu_stats": {"a": {"median_vertebra_hu": 250.4}, "b": {"median_vertebra_hu": 180.0}}}
    doc = tmp_path / "DATA.md"
    doc.write_text(f"before\n{figures.DOC_START}\nold\n{figures.DOC_END}\nafter\n")
    assert figures.update_data_doc(doc, summary)
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("\nafter\n") and "old" not in text
    assert "| axial | 3 | 4 | 7 |" in text and "180 (b) to 250 (a)" in text
    assert not figures.update_data_doc(doc, summary)
    assert doc.read_text() == text  # idempotent
    bare = tmp_path / "bare.md"
    bare.write_text("no block\n")
    with pytest.raises(InputError, match="bare.md"):
        figures.update_data_doc(bare, summary)
