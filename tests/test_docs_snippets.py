"""Execute the ```python blocks of docs/graphs.md, and README.md blocks marked <!-- snippet -->.

Blocks of one file run in order in one namespace, so later blocks build on earlier ones. In README.md only
a ```python block directly preceded by a line ``<!-- snippet -->`` runs (the README holds shell and
C++ blocks and examples that need files)."""

import re
from pathlib import Path

import pytest

import caffe2_ort

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?P<marker><!-- snippet -->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def python_blocks(text, marked_only):
    return [m.group("code") for m in FENCE.finditer(text) if m.group("marker") or not marked_only]


def _run_blocks(path, marked_only):
    caffe2_ort.get_library_path()  # a missing library is a failure, not a skip
    blocks = python_blocks(path.read_text(), marked_only)
    ns = {"__name__": f"snippets_{path.stem}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{path.name}[block {i}]", "exec"), ns)
        except Exception as e:  # name the failing block
            raise AssertionError(f"{path.name} python block {i} failed: {e!r}\n{code}") from e
    return len(blocks)


def test_graphs_md_snippets():
    assert _run_blocks(ROOT / "docs" / "graphs.md", marked_only=False) >= 6


def test_readme_marked_snippets():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.fail("README.md is missing")
    _run_blocks(readme, marked_only=True)


def test_marker_selection():
    text = "```python\na = 1\n```\n<!-- snippet -->\n```python\nb = 2\n```\n"
    assert python_blocks(text, marked_only=True) == ["b = 2\n"]
    assert python_blocks(text, marked_only=False) == ["a = 1\n", "b = 2\n"]
