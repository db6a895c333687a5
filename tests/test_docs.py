"""The documentation cannot drift from the code: every ```python block of README.md and docs/ runs, and the
generated results tables equal what their benchmark's ``--report-only`` writes from the committed cells.

The blocks of one page run in order in one namespace (a page is read top to bottom), in a temporary working
directory, offline, on the data they make themselves. A block that is not meant to run is not a ``python`` block
(``text``, ``bash``, ``console``).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_script

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGES = [p for p in PAGES if "_build" not in p.parts]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n]*)\n"
                   r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks whose info string is ``python`` (or ``{code-block} python``)."""
    out = []
    for m in FENCE.finditer(text):
        info = m["info"].strip().split()
        if info and (info[0] == "python" or info[0] in ("{code-block}", "{code}") and info[1:2] == ["python"]):
            out.append(m["body"])
    return out


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```{code-block} python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_example_runs(page, tmp_path, monkeypatch):
    """In this process (torch is imported once for every page), in a fresh namespace and an empty directory."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    script = "\n\n".join(f"# --- block {i}\n{b}" for i, b in enumerate(python_blocks(page.read_text())))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        exec(compile(script, f"<{page.relative_to(ROOT)}>", "exec"), {"__name__": "__main__"})
    finally:
        torch.set_num_threads(threads)  # a page may set it; the next tests keep theirs
        import matplotlib.pyplot as plt

        plt.close("all")


REPORTS = {  # committed report -> the --report-only arguments that write it (the command each report names)
    "matrix_mnist.md": ["--dataset", "mnist", "--attacks", "unsplit,unsplit_labels,similarity", "--seeds", "0,1,2"],
    "matrix_mnist_sweep-label_dp.md": ["--dataset", "mnist", "--sweep", "label_dp", "--attacks",
                                       "unsplit,unsplit_labels,similarity", "--seeds", "0,1,2"],
    "matrix_cifar-bn.md": ["--dataset", "cifar", "--batch-norm", "--attacks",
                           "unsplit_labels,similarity,fsha_detection,sladv,sdar", "--seeds", "0,1,2"],
}


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_committed_results_tables_are_what_report_only_writes_from_the_committed_cells(name, tmp_path):
    import shutil

    committed = ROOT / "benchmarks" / "results" / "matrix"
    shutil.copytree(committed / "cells", tmp_path / "cells")
    args = [*REPORTS[name], "--out", str(tmp_path), "--report-only"]
    proc = run_script(ROOT / "benchmarks" / "matrix.py", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / name).read_text() == (committed / name).read_text(), f"{name} is stale: rerun its command"
    # the report names the command that regenerates it
    assert f"`python benchmarks/matrix.py {' '.join(REPORTS[name])} --report-only`" in (committed / name).read_text()


@pytest.mark.parametrize("script,folder", [("fsha_vs_official.py", "fsha"),
                                           ("fsha_client_vs_official.py", "fsha_client"), ("sladv.py", "sladv"),
                                           ("sdar.py", "sdar")])
def test_committed_benchmark_reports_are_what_report_only_writes_from_the_committed_cells(script, folder, tmp_path):
    import shutil

    committed = ROOT / "benchmarks" / "results" / folder
    if not (committed / "cells").is_dir():
        pytest.skip(f"no committed {folder} cells")
    shutil.copytree(committed / "cells", tmp_path / "cells")
    proc = run_script(ROOT / "benchmarks" / script, "--out", tmp_path, "--report-only", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stale = f"benchmarks/results/{folder}/report.md is stale: rerun python benchmarks/{script} --report-only"
    assert (tmp_path / "report.md").read_text() == (committed / "report.md").read_text(), stale
