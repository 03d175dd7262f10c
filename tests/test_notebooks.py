"""The teaching notebooks: committed without outputs, and each runs top to bottom (headless, offline, tiny pair)."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TINY_TARGET = ROOT / "assets" / "tiny-pair" / "tiny-target" / "config.json"
CELL_TIMEOUT_S = 600


def _ids(path: Path) -> str:
    return path.stem


EXPECTED = ["01_dtw_from_scratch.ipynb", "02_tokentiming_round_by_round.ipynb", "03_lossless_or_not.ipynb",
            "04_benchmark_report.ipynb"]


def test_notebooks_exist():
    assert set(EXPECTED) <= {p.name for p in NOTEBOOKS}, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for n, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name} cell {n} has outputs: clear them before committing"
        assert cell.execution_count is None, f"{path.name} cell {n} has an execution count: clear it"


def _kernel_env() -> dict:
    env = dict(os.environ)
    env.update(TOKENTIMING_PAIR="tiny", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs(path):
    assert TINY_TARGET.exists(), "the tiny pair is missing: python -m tokentiming.tools.tinypair rebuilds it"
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    # No front-end emulation of Output widgets: nbclient's mimic answers on the shell channel while it waits on
    # it, which intermittently deadlocks (jupyter/nbclient#312). Without it, output captured by a widget
    # (`with out: ...`) simply lands in the cell's own outputs; every line of the callbacks still runs.
    client.comm_open_handlers["jupyter.widget"] = lambda msg: None
    # "python3" is the native kernel: jupyter_client starts it with this interpreter (sys.executable).
    client.execute(env=_kernel_env())
