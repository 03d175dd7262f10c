"""Notebook support: views that widgets redraw in place, and executed copies of the notebooks for reading.

``LiveView`` is what the notebooks' sliders redraw. Publishing runs every notebook and writes copies with their
outputs to notebooks/executed/:

    python -m tokentiming.tools.notebooks                  # all four notebooks, the shipped tiny pair
    python -m tokentiming.tools.notebooks --pair default   # real models (fetch them first)
    python -m tokentiming.tools.notebooks 02 03            # only the notebooks whose names start so

The copies are for reading (on GitHub, say) without running anything: widget state is dropped (a widget
shows as its one-line text form), execution timings are not recorded, and the total size is checked against
a budget so the copies stay small enough to commit. Needs nbclient and nbformat (``pip install -e ".[test]"``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
EXECUTED_DIR = NOTEBOOK_DIR / "executed"
#: All executed copies together; plotly figures carry their data and template, so they are the bulk.
MAX_TOTAL_BYTES = 5 * 2**20
CELL_TIMEOUT_S = 600
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: The mimetype for Jupyter, VS Code and nbviewer (which loads plotly.js itself); no plotly.js is embedded.
PLOTLY_RENDERER = "plotly_mimetype+notebook_connected"


class LiveView:
    """One output (a plotly figure, HTML, anything IPython displays) shown now and redrawn in place by ``update``.

    The output is replaced through its display id, so widget callbacks need no ``ipywidgets.Output`` (whose
    emulation in headless runners can hang a cell). Plotly figures display themselves through
    ``_ipython_display_``, which ignores display ids, so every view is shown as its mime bundle.
    """

    def __init__(self, view):
        from IPython.display import display

        self.handle = display(mime_bundle(view), raw=True, display_id=True)

    def update(self, view) -> None:
        self.handle.update(mime_bundle(view), raw=True)


def mime_bundle(view) -> dict:
    """The view as ``{mimetype: data}``: plotly figures through plotly's renderers, the rest through IPython's."""
    if hasattr(view, "to_plotly_json"):
        return view._repr_mimebundle_()
    from IPython.core.formatters import format_display_data

    return format_display_data(view)[0]


def kernel_env(pair: str) -> dict:
    """The environment the notebooks' kernel starts with: the chosen pair, quiet and (for tiny) offline."""
    env = dict(os.environ)
    env.update(TOKENTIMING_PAIR=pair, PLOTLY_RENDERER=PLOTLY_RENDERER, HF_HUB_DISABLE_PROGRESS_BARS="1",
               TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    if pair == "tiny":
        env["HF_HUB_OFFLINE"] = "1"
    return env


def execute(path: Path, pair: str, timeout: int):
    """Run one notebook top to bottom in a fresh kernel started in notebooks/, with default nbclient settings."""
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=kernel_env(pair))
    return notebook


def strip_widgets(notebook) -> None:
    """Drop the saved widget state; widget outputs keep only their text form (no state, nothing to draw)."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                output["data"] = {"text/plain": data.get("text/plain", "")}


def provenance_cell(source_name: str, pair: str):
    """A first markdown cell saying what this copy is, where and when it ran (timings depend on it)."""
    import nbformat
    import torch

    today = datetime.date.today().isoformat()
    machine = (f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
               f"torch {torch.__version__}, Python {platform.python_version()}")
    return nbformat.v4.new_markdown_cell(
        f"*Executed copy of [`notebooks/{source_name}`](../{source_name}), written by "
        f"`python -m tokentiming.tools.notebooks` on {today} with the `{pair}` pair ({machine}); timings are that "
        "machine's. The interactive figures (plotly) and the sliders need a live notebook or nbviewer: GitHub shows "
        "the text and tables only. To explore, run the notebook itself.*")


def publish(path: Path, pair: str, out_dir: Path, timeout: int) -> Path:
    """Execute one notebook and write its small, widget-free copy to out_dir; return the copy's path."""
    import nbformat

    notebook = execute(path, pair, timeout)
    strip_widgets(notebook)
    note = provenance_cell(path.name, pair)
    note["id"] = f"{path.stem[:2]}-executed"
    notebook.cells.insert(0, note)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / path.name
    nbformat.write(notebook, target)
    return target


def select(names: list[str], notebook_dir: Path) -> list[Path]:
    """The notebooks to run: all of them, or those whose file names start with one of the given prefixes."""
    notebooks = sorted(notebook_dir.glob("*.ipynb"))
    if not notebooks:
        raise SystemExit(f"no notebooks in {notebook_dir} (the notebooks live in a checkout of the repository)")
    if not names:
        return notebooks
    chosen = [p for p in notebooks if any(p.name.startswith(name) for name in names)]
    if not chosen:
        raise SystemExit(f"no notebook in {notebook_dir} starts with {', '.join(names)}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Execute the notebooks and write copies with their outputs, "
                                                 "small enough to commit, to notebooks/executed/.")
    parser.add_argument("names", nargs="*", help="notebook name prefixes, e.g. 02 (default: all)")
    parser.add_argument("--pair", default="tiny", help="TOKENTIMING_PAIR for the kernel: tiny (default), test, default")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOK_DIR, help="folder of the source notebooks")
    parser.add_argument("--out", type=Path, default=EXECUTED_DIR, help="folder for the executed copies")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    try:
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
    except ImportError:
        raise SystemExit('executing notebooks needs nbclient and nbformat: pip install -e ".[test]"') from None

    for path in select(args.names, args.notebooks):
        started = datetime.datetime.now()
        copy = publish(path, args.pair, args.out, args.timeout)
        seconds = (datetime.datetime.now() - started).total_seconds()
        print(f"{copy}: {copy.stat().st_size / 1024:.0f} KiB, ran in {seconds:.0f} s", flush=True)
    total = sum(p.stat().st_size for p in args.out.glob("*.ipynb"))
    print(f"{args.out}: {total / 2**20:.2f} MiB in all")
    if total > MAX_TOTAL_BYTES:
        sys.exit(f"the executed copies total {total / 2**20:.1f} MiB, over the {MAX_TOTAL_BYTES / 2**20:.0f} MiB "
                 "budget: shrink the figures (fewer points, fewer slider steps) before committing them")


if __name__ == "__main__":
    main()
