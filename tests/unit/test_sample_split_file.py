"""The bundled csv_example split file uses the keys the README documents."""

from __future__ import annotations

import json

from vlmtune.config import project_root


def test_csv_example_split_file_matches_the_readme():
    readme = (project_root() / "README.md").read_text(encoding="utf-8")
    assert '`dataset.split_file` (`{"train": [ids], "heldout": [ids]}`' in readme
    split = json.loads((project_root() / "datasets/samples/csv_example/splits.json").read_text())
    assert set(split) == {"train", "heldout"}
