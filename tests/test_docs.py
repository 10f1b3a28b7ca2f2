"""Every ```python block of the README and docs/ runs (against a small real predictor in a scratch folder)."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(f.relative_to(ROOT).as_posix(), i, code) for f in FILES
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", f.read_text(encoding="utf-8"), flags=re.S))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from latpred.selection import select
    from tests.helpers_data import synthetic_data

    d = tmp_path_factory.mktemp("docs")
    pred, _ = select(synthetic_data(), families=["ridge"], cv=2)
    pred.save(d / "latpred-out" / "predictor")
    return d


def test_docs_have_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("where,index,code", BLOCKS, ids=[f"{w}#{i}" for w, i, _ in BLOCKS])
def test_doc_example_runs(where, index, code, workdir, monkeypatch):
    if "torchvision" in code:
        pytest.importorskip("torchvision")
    monkeypatch.chdir(workdir)
    exec(compile(code, f"{where}#{index}", "exec"), {"__name__": "__docs__"})
    assert os.getcwd() == str(workdir)


def test_cli_reference_is_current(monkeypatch):
    """docs/cli.md is what `python scripts/gen_cli_docs.py` writes today (regenerate it after changing a command)."""
    import importlib.util

    monkeypatch.setenv("COLUMNS", "100")
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == mod.render()
