"""The teaching notebooks: committed without outputs, and each runs top to bottom under a standard headless runner
(nbclient with its default settings, as nbmake, nbconvert --execute and papermill use it), offline, on the tiny pair.
"""

import ast
import copy
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from IPython.core.inputtransformer2 import TransformerManager  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TINY_TARGET = ROOT / "assets" / "tiny-pair" / "tiny-target" / "config.json"
#: Long enough for the slowest cell on a busy 2-core machine (about 30 s idle), short enough that CI sees a hang.
CELL_TIMEOUT_S = 300
#: How late the runner may read a cell's execute reply. nbclient waits up to 4 s for the last outputs; a runner
#: that missed the reply sits until the cell timeout (and then finds it), so a hang shows as a lag near 300 s.
REPLY_LAG_LIMIT_S = 30
#: ipywidgets names whose front-end emulation in nbclient answers the kernel on the shell socket while the runner
#: waits on that socket for the execute reply, which intermittently misses the reply (jupyter/nbclient#312).
OUTPUT_WIDGET_NAMES = {"Output", "interactive_output", "interact", "interact_manual", "interactive"}

#: The output a displayed widget leaves in a cell (its controls, as opposed to the views they redraw).
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

EXPECTED = ["01_dtw_from_scratch.ipynb", "02_tokentiming_round_by_round.ipynb", "03_lossless_or_not.ipynb",
            "04_benchmark_report.ipynb"]


def _ids(path: Path) -> str:
    return path.stem


def _code_cells(path: Path):
    notebook = nbformat.read(path, as_version=4)
    return [(n, cell) for n, cell in enumerate(notebook.cells) if cell.cell_type == "code"]


def test_notebooks_exist():
    assert set(EXPECTED) <= {p.name for p in NOTEBOOKS}, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_committed_without_outputs(path):
    nbformat.validate(nbformat.read(path, as_version=4))
    for n, cell in _code_cells(path):
        assert cell.outputs == [], f"{path.name} cell {n} has outputs: clear them before committing"
        assert cell.execution_count is None, f"{path.name} cell {n} has an execution count: clear it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_no_output_widgets_that_deadlock_headless_runners(path):
    """Interactive views redraw through display handles (display(..., display_id=True).update), never Output widgets."""
    for n, cell in _code_cells(path):
        tree = ast.parse(TransformerManager().transform_cell(cell.source))  # IPython syntax (%magics) as Python
        names = {node.id if isinstance(node, ast.Name) else node.attr
                 for node in ast.walk(tree) if isinstance(node, (ast.Name, ast.Attribute))}
        used = sorted(names & OUTPUT_WIDGET_NAMES)
        assert not used, f"{path.name} cell {n} uses {used}: headless runners can hang on it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebooks_import_the_installed_package_without_patching_sys_path(path):
    for n, cell in _code_cells(path):
        assert "sys.path" not in cell.source, f"{path.name} cell {n} patches sys.path: import the installed package"


def _kernel_env() -> dict:
    """Tiny pair, offline, one thread for torch and numba (numba's OpenMP pool spins on a shared 2-core machine).

    PYTHONPATH is left as it is: the kernel starts in notebooks/, so it imports tokentiming only if installed.
    """
    env = dict(os.environ)
    env.update(TOKENTIMING_PAIR="tiny", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


@dataclass
class Run:
    """One notebook executed top to bottom, then every control moved once."""
    notebook: object
    outputs_before_moving: list
    reply_lag_s: dict


#: Run in the notebook's kernel after its last cell: give every control (a global widget) another value, as a
#: reader dragging it would; its observers must redraw their views.
MOVE_EVERY_CONTROL = """
import ipywidgets
for control in [value for value in list(globals().values()) if isinstance(value, ipywidgets.ValueWidget)]:
    if isinstance(control, (ipywidgets.IntSlider, ipywidgets.FloatSlider)):
        control.value = control.min if control.value != control.min else control.max
    elif isinstance(control, (ipywidgets.Dropdown, ipywidgets.ToggleButtons)):
        control.index = 0 if control.index else len(control.options) - 1
    elif isinstance(control, ipywidgets.Text):
        control.value = "" if control.value else "def f(x): return x"
"""


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=_ids)
def run(request) -> Run:
    assert TINY_TARGET.exists(), "the tiny pair is missing: python -m tokentiming.tools.tinypair rebuilds it"
    notebook = nbformat.read(request.param, as_version=4)
    reply_lag_s = {}

    def note_reply_lag(cell, cell_index, execute_reply):
        # The reply's header date is when the kernel sent it; now is when the runner got to it.
        reply_lag_s[cell_index] = (datetime.datetime.now(datetime.timezone.utc)
                                   - execute_reply["header"]["date"]).total_seconds()

    # nbclient's defaults, widget handling included; "python3" is the kernel of this interpreter (sys.executable).
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
                                     on_cell_executed=note_reply_lag)
    with client.setup_kernel(env=_kernel_env()):
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
        outputs_before_moving = copy.deepcopy([cell.get("outputs", []) for cell in notebook.cells])
        notebook.cells.append(nbformat.v4.new_code_cell(MOVE_EVERY_CONTROL))
        client.execute_cell(notebook.cells[-1], len(notebook.cells) - 1)
    return Run(notebook, outputs_before_moving, reply_lag_s)


def test_notebook_runs_under_a_standard_runner_without_widget_workarounds(run):
    late = {n: round(lag) for n, lag in run.reply_lag_s.items() if lag > REPLY_LAG_LIMIT_S}
    assert not late, f"the runner read these cells' execute replies this many seconds late: {late}"
    ran = [cell for cell in run.notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    assert len(run.reply_lag_s) == len(ran)


def test_moving_a_control_redraws_its_views_in_place(run):
    """Each cell that shows controls shows views too, and moving the controls changes them (no frozen figure)."""
    control_cells = [n for n, outputs in enumerate(run.outputs_before_moving)
                     if any(WIDGET_VIEW in output.get("data", {}) for output in outputs)]
    assert control_cells, "no controls displayed: the notebook lost its interactivity"
    for n in control_cells:
        views_before = [o for o in run.outputs_before_moving[n] if WIDGET_VIEW not in o.get("data", {})]
        views_after = [o for o in run.notebook.cells[n].outputs if WIDGET_VIEW not in o.get("data", {})]
        assert views_before, f"cell {n} shows controls but nothing for them to redraw"
        assert views_after != views_before, f"cell {n}: moving its controls left its views unchanged"


EXECUTED_DIR = NOTEBOOK_DIR / "executed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_executed_copy_is_published_from_the_current_notebook(path):
    """A stale copy would show readers outputs of code the notebook no longer has: republish after editing."""
    copy_path = EXECUTED_DIR / path.name
    assert copy_path.exists(), f"no executed copy of {path.name}: python -m tokentiming.tools.notebooks {path.name[:2]}"
    sources = [cell.source for _, cell in _code_cells(path)]
    published = [cell.source for _, cell in _code_cells(copy_path)]
    assert published == sources, f"{copy_path} is stale: python -m tokentiming.tools.notebooks {path.name[:2]}"


def test_executed_copies_stay_small_and_carry_no_widget_state():
    from tokentiming.tools.notebooks import MAX_TOTAL_BYTES, WIDGET_VIEW as PUBLISHED_WIDGET_VIEW

    copies = sorted(EXECUTED_DIR.glob("*.ipynb"))
    assert sum(p.stat().st_size for p in copies) <= MAX_TOTAL_BYTES
    for copy_path in copies:
        notebook = nbformat.read(copy_path, as_version=4)
        assert "widgets" not in notebook.metadata, f"{copy_path.name} keeps widget state"
        outputs = [output for _, cell in _code_cells(copy_path) for output in cell.outputs]
        assert outputs, f"{copy_path.name} has no outputs"
        assert not [o for o in outputs if PUBLISHED_WIDGET_VIEW in o.get("data", {})], copy_path.name


def test_publishing_keeps_outputs_and_drops_widget_state(tmp_path):
    """The publisher on a small notebook: a slider and a LiveView figure, run in a real kernel."""
    from tokentiming.tools.notebooks import publish

    source = tmp_path / "05_small.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import ipywidgets, plotly.graph_objects as go\n"
        "from tokentiming.tools.notebooks import LiveView\n"
        "slider = ipywidgets.IntSlider(value=2, description='n')\n"
        "display(slider)\n"
        "view = LiveView(go.Figure(go.Bar(y=[1, 2])))\n"
        "print('drawn')")], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}), source)
    copy_path = publish(source, "tiny", tmp_path / "executed", timeout=CELL_TIMEOUT_S)
    published = nbformat.read(copy_path, as_version=4)
    assert "widgets" not in published.metadata
    note = published.cells[0]
    assert note.cell_type == "markdown" and "python -m tokentiming.tools.notebooks" in note.source
    outputs = published.cells[1].outputs
    assert outputs[0].data == {"text/plain": "IntSlider(value=2, description='n')"}  # the slider, as text only
    assert sum("application/vnd.plotly.v1+json" in output.get("data", {}) for output in outputs) == 1
    assert outputs[-1].text == "drawn\n"
