"""The notebooks: committed with outputs and no errors (fast); they execute (slow, nbclient).

The slow test runs `ablations.ipynb` on the `runlocal` sizes (`SCORE_NB_TINY=1`) in a
temporary workdir, then `reproduce_tables.ipynb` on that workdir, then `losses.ipynb`.
"""

import os

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("losses.ipynb", "ablations.ipynb", "reproduce_tables.ipynb")


def _read(name):
  return nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_with_outputs_and_no_errors(name):
  nb = _read(name)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(c.get("execution_count") for c in code), "execute before committing"
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "expected a plot"


def _execute(name, timeout=1800):
  from nbclient import NotebookClient
  nb = _read(name)
  NotebookClient(nb, timeout=timeout, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()
  return nb


def _text(nb):
  out = []
  for cell in nb.cells:
    for o in cell.get("outputs", []):
      out.append(o.get("text", "") + o.get("data", {}).get("text/markdown", "")
                 + o.get("data", {}).get("text/plain", ""))
  return "\n".join(out)


@pytest.mark.slow
def test_notebooks_execute(tmp_path, monkeypatch):
  pytest.importorskip("nbclient")
  workdir = str(tmp_path / "ablations")
  monkeypatch.setenv("SCORE_NB_WORKDIR", workdir)
  monkeypatch.setenv("SCORE_NB_TINY", "1")
  nb = _execute("ablations.ipynb")
  assert os.path.exists(os.path.join(workdir, "results.json"))
  text = _text(nb)
  for variant in ("score", "no_stage1", "no_shaping", "no_multi_turn"):
    assert f"| {variant} | 16 |" in text

  monkeypatch.setenv("SCORE_NB_MATH", str(tmp_path / "no_math_run"))
  monkeypatch.setenv("SCORE_NB_HUMANEVAL", str(tmp_path / "no_humaneval_run"))
  text = _text(_execute("reproduce_tables.ipynb"))
  assert "No `results.json` in" in text and "| score | 60.0 | 64.4 |" in text  # Table 2
  assert "Table 4 — ablations (MATH)" in text and "not comparable" in text
  assert "| no_stage1 | 16 |" in text and "59.2" in text  # ours beside the published row

  text = _text(_execute("losses.ipynb"))
  assert "wrong → right (i→c): r2' = +11" in text
