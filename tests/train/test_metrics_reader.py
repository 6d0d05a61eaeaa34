"""The one metrics.jsonl reader: a torn last line is skipped, damage elsewhere names file and line."""

from __future__ import annotations

import pytest

from replaytune.errors import DataError
from replaytune.train.metrics import read_metrics


def test_a_torn_last_line_is_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
    assert read_metrics(tmp_path) == [{"step": 1}, {"step": 2}]  # the run directory or the file


@pytest.mark.parametrize("line, why", [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_a_damaged_complete_line_names_file_and_line(tmp_path, line, why):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n' + line + '\n{"step": 3}\n')
    with pytest.raises(DataError, match=rf"^{path}:2: {why}"):
        read_metrics(path)
