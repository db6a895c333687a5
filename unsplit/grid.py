"""One experiment runner for every benchmark: cells, an atomic result store, and local or Ray executors.

A benchmark is a grid of independent **cells**. A cell is a readable name plus a JSON-serialisable ``config``; a cell
function ``fn(config, **runtime) -> dict`` turns the config into metrics (``runtime`` carries what does not change a
result: data directory, device, progress bars). The :class:`ResultStore` keeps one JSON file per cell, written
atomically *by the driver only* — the metrics at the top level (so report code reads them as plain keys) and the
bookkeeping under ``"_cell"`` (config, status, seconds, error and traceback). A rerun skips the finished cells
(``recompute=True`` forces them), retries the failed ones, and refuses to mix results: a stored cell whose config
differs from the cell of the same name is an error, never silently overwritten.

Executors:

* ``local`` (default): one process, cells in order (cells of one ``group`` — e.g. those sharing a trained model —
  kept together), a tqdm bar over cells.
* ``ray``: each cell a Ray task with its own CPU / GPU request (``Cell.num_cpus``, ``Cell.num_gpus``);
  ``address="auto"`` joins a running cluster, no address starts a local one. Tasks only *return* their result; the
  driver writes it, so a killed or retried task never leaves a partial file. Ray is an optional extra
  (``pip install -e ".[ray]"``).

A cell function may return :class:`CellResult` to attach artefacts (tensors, PNG bytes) saved next to the JSON,
before it (a cell counts as finished only once its JSON exists).

Example::

    from unsplit.grid import Cell, ResultStore, run_grid

    def square(config, scale=1):
        return {"value": config["x"] ** 2 * scale}

    cells = [Cell(f"x{x}", {"x": x}) for x in range(4)]
    summary = run_grid(cells, square, store=ResultStore("results/squares"), runtime={"scale": 2})
"""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import re
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

__all__ = [
    "EXECUTORS",
    "Cell",
    "CellResult",
    "GridSummary",
    "ResultStore",
    "run_grid",
    "cell_name",
    "mean_std",
    "format_mean_std",
    "fold_seeds",
    "pm",
    "environment",
    "describe_environments",
    "add_grid_arguments",
    "grid_options",
    "report_failures",
    "run_benchmark",
]

EXECUTORS = ("local", "ray")
_META = "_cell"


def cell_name(*parts: Any) -> str:
    """A readable file-name stem from config values: ``cell_name("mnist", "d3", 0.5)`` -> ``"mnist_d3_0.5"``.

    Characters other than letters, digits and ``._+=-`` become ``-``; ``None`` parts are dropped.
    """
    words = []
    for p in parts:
        if p is None:
            continue
        text = f"{p:g}" if isinstance(p, float) else str(p)
        words.append(re.sub(r"[^A-Za-z0-9._+=-]", "-", text))
    if not words:
        raise ValueError("cell_name needs at least one part")
    return "_".join(words)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One independent unit of a grid.

    Args:
        name: readable, unique path stem inside the store (``/`` makes sub-folders, e.g. ``"mnist/d3_s0"``).
        config: JSON-serialisable settings that determine the result (stored with it and compared on reruns).
        num_cpus, num_gpus: the Ray task's resource request (ignored by the local executor).
        group: cells that share expensive state (a trained model cached in the process) — kept adjacent.
    """

    name: str
    config: Mapping[str, Any]
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    group: Optional[str] = None

    def __post_init__(self):
        if not self.name or self.name.startswith("/") or ".." in Path(self.name).parts:
            raise ValueError(f"a cell name must be a relative path without '..', got {self.name!r}")
        try:
            json.dumps(dict(self.config))
        except TypeError as exc:
            raise ValueError(f"cell {self.name!r}: config is not JSON-serialisable ({exc})") from None
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"cell {self.name!r}: resource requests must be >= 0")


@dataclasses.dataclass
class CellResult:
    """What a cell function may return instead of a plain metrics dict.

    Args:
        metrics: JSON-serialisable metrics (top-level keys of the cell's JSON).
        artefacts: ``{suffix: object}`` saved as ``<name><suffix>`` beside the JSON: ``bytes`` written as they are
            (e.g. a PNG), anything else with ``torch.save`` (e.g. ``{".pt": {"reconstructions": x}}``).
    """

    metrics: Dict[str, Any]
    artefacts: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class GridSummary:
    """Counts of one :func:`run_grid` call; ``failed`` names the cells that raised (their files hold the error)."""

    finished: List[str]
    skipped: List[str]
    failed: List[str]
    seconds: float

    def __str__(self) -> str:
        text = (f"{len(self.finished)} cells run, {len(self.skipped)} already stored, {len(self.failed)} failed "
                f"in {self.seconds:.1f} s")
        return text + (f" (failed: {', '.join(self.failed)})" if self.failed else "")


class ResultStore:
    """One atomic JSON per cell under ``root`` (``<root>/<cell name>.json``).

    Files written before this runner existed (no ``"_cell"`` block) count as finished cells with unknown config.
    """

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)

    def path(self, cell: Union[Cell, str]) -> Path:
        name = cell.name if isinstance(cell, Cell) else cell
        return self.root / f"{name}.json"

    def load(self, cell: Union[Cell, str]) -> Optional[dict]:
        """The stored record of ``cell`` (``None`` if absent)."""
        path = self.path(cell)
        if not path.exists():
            return None
        with open(path) as fh:
            return json.load(fh)

    def status(self, cell: Cell) -> str:
        """``"missing"``, ``"ok"``, ``"error"``; raises ``ValueError`` if a stored result has a different config."""
        record = self.load(cell)
        if record is None:
            return "missing"
        meta = record.get(_META)
        if meta is None:
            return "ok"
        if meta.get("status") == "ok" and _canonical(meta.get("config")) != _canonical(cell.config):
            raise ValueError(
                f"{self.path(cell)} holds a result for a different config than cell {cell.name!r} "
                "(rerun with --recompute to replace it, or use another output directory)"
            )
        return meta.get("status", "ok")

    def write(self, cell: Cell, result: Union[dict, CellResult], *, seconds: float,
              env: Optional[Mapping] = None) -> Path:
        """Stores a finished cell: artefacts first, the JSON last."""
        from .util import atomic_save, atomic_write_bytes, atomic_write_json  # torch: imported by the driver only
        if isinstance(result, CellResult):
            metrics, artefacts = result.metrics, result.artefacts
        else:
            metrics, artefacts = result, {}
        if not isinstance(metrics, Mapping):
            raise TypeError(f"cell {cell.name!r}: the cell function returned {type(metrics).__name__}, not a dict")
        if _META in metrics:
            raise ValueError(f"cell {cell.name!r}: metric key {_META!r} is reserved")
        base = self.path(cell)
        for suffix, obj in artefacts.items():
            target = base.with_name(base.name[: -len(".json")] + suffix)
            if isinstance(obj, (bytes, bytearray)):
                atomic_write_bytes(target, bytes(obj))
            else:
                atomic_save(obj, target)
        record = {**metrics, _META: self._meta(cell, "ok", seconds, env)}
        return atomic_write_json(base, _jsonable(record))

    def write_error(self, cell: Cell, error: str, trace: str, *, seconds: float) -> Path:
        """Stores a failed cell (retried on the next run)."""
        from .util import atomic_write_json
        meta = self._meta(cell, "error", seconds)
        meta.update(error=error, traceback=trace)
        return atomic_write_json(self.path(cell), {_META: meta})

    def records(self, pattern: str = "**/*.json", *, errors: bool = False) -> List[dict]:
        """Every stored record under ``root`` matching ``pattern`` (sorted by path); failed cells only if ``errors``."""
        return [record for _, record in self.named_records(pattern, errors=errors)]

    def named_records(self, pattern: str = "**/*.json", *, errors: bool = False) -> List[tuple]:
        """``(cell name, record)`` pairs, as :meth:`records` (the name is the path below ``root`` minus ``.json``)."""
        out = []
        for path in sorted(self.root.glob(pattern)):
            with open(path) as fh:
                record = json.load(fh)
            if not isinstance(record, dict):
                continue
            if record.get(_META, {}).get("status", "ok") != "ok" and not errors:
                continue
            out.append((path.relative_to(self.root).with_suffix("").as_posix(), record))
        return out

    @staticmethod
    def _meta(cell: Cell, status: str, seconds: float, env: Optional[Mapping] = None) -> dict:
        env = dict(env) if env is not None else {"host": platform.node()}
        return {"name": cell.name, "status": status, "config": dict(cell.config), "seconds": round(seconds, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **env}


def _canonical(config) -> str:
    return json.dumps(_jsonable(config), sort_keys=True)


def _jsonable(obj):
    """Tuples to lists and numpy / torch scalars to Python numbers, so a config compares equal after a JSON trip."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def _order(cells: Sequence[Cell]) -> List[Cell]:
    """Cells of one group adjacent, groups in order of first appearance, the given order kept otherwise."""
    first: Dict[Any, int] = {}
    keys = []
    for i, c in enumerate(cells):
        key = c.group if c.group is not None else ("", i)
        first.setdefault(key, i)
        keys.append((first[key], i))
    return [cells[i] for _, i in sorted(keys)]


def environment() -> Dict[str, Any]:
    """Where a cell ran, recorded in its ``"_cell"`` block (reports print it beside their tables): host, CPU,
    cores, torch threads, GPU, and the versions of Python and the libraries that can change a result."""
    import importlib.metadata
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    env: Dict[str, Any] = {"host": platform.node(), "cpu": cpu, "cpus": os.cpu_count(),
                           "python": platform.python_version()}
    for package in ("torch", "torchvision", "numpy", "opacus", "unsplit"):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = None
    import torch

    env["torch_threads"] = torch.get_num_threads()
    env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return env


def _execute(fn: Callable, config: Mapping, runtime: Mapping):
    """Runs one cell where it is scheduled and returns ``("ok", result, seconds, environment())`` or
    ``("error", message, traceback, seconds)``."""
    start = time.perf_counter()
    try:
        result = fn(dict(config), **runtime)
        return ("ok", result, time.perf_counter() - start, environment())
    except Exception as exc:  # recorded in the cell's file; the grid goes on
        return ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(), time.perf_counter() - start)


def run_grid(
    cells: Iterable[Cell],
    fn: Callable[..., Union[dict, CellResult]],
    *,
    store: Union[ResultStore, str, Path],
    executor: str = "local",
    recompute: bool = False,
    runtime: Optional[Mapping[str, Any]] = None,
    address: Optional[str] = None,
    num_cpus: Optional[int] = None,
    progress: bool = True,
    desc: str = "cells",
) -> GridSummary:
    """Runs every unfinished cell of a grid and stores its result.

    Args:
        cells: the grid (names must be unique).
        fn: ``fn(config, **runtime)`` returning a metrics dict or a :class:`CellResult`; must be importable or
            picklable for ``executor="ray"``.
        store: where results live (a :class:`ResultStore` or its root directory).
        executor: ``"local"`` or ``"ray"``.
        recompute: rerun finished cells too (their files are replaced when the new result is in).
        runtime: keyword arguments for ``fn`` that do not change a result (data directory, device, progress).
        address: Ray cluster address (``"auto"`` joins a running cluster; ``None`` starts a local one).
        num_cpus: CPUs of a local Ray cluster (default: all).
        progress: show a tqdm bar over cells.
        desc: the bar's label.

    Returns:
        :class:`GridSummary`. Cells that raised are listed in ``failed`` and stored with their error and traceback.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    store = store if isinstance(store, ResultStore) else ResultStore(store)
    cells = list(cells)
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate cell names: {', '.join(dup[:5])}")
    runtime = dict(runtime or {})
    start = time.perf_counter()
    skipped, todo = [], []
    for c in _order(cells):
        if not recompute and store.status(c) == "ok":
            skipped.append(c.name)
        else:
            todo.append(c)
    finished: List[str] = []
    failed: List[str] = []

    def record(cell: Cell, outcome) -> None:
        if outcome[0] == "ok":
            try:
                store.write(cell, outcome[1], seconds=outcome[2], env=outcome[3])
                finished.append(cell.name)
                return
            except (TypeError, ValueError) as exc:  # an unserialisable result is the cell's error, not the grid's
                outcome = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(), outcome[2])
        store.write_error(cell, outcome[1], outcome[2], seconds=outcome[3])
        failed.append(cell.name)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=desc, unit="cell", disable=not progress or not todo)
    try:
        if executor == "local":
            for cell in todo:
                bar.set_postfix_str(cell.name, refresh=False)
                record(cell, _execute(fn, cell.config, runtime))
                bar.update()
        else:
            _run_ray(todo, fn, runtime, record, bar, address=address, num_cpus=num_cpus)
    finally:
        bar.close()
    return GridSummary(finished, skipped, failed, time.perf_counter() - start)


def _run_ray(todo: List[Cell], fn, runtime, record, bar, *, address, num_cpus) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError('executor "ray" needs Ray: pip install -e ".[ray]"') from None
    if not todo:
        return
    started_here = not ray.is_initialized()
    if started_here:
        options = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **options)
    try:
        task = ray.remote(_execute)
        fn_ref, runtime_ref = ray.put(fn), ray.put(runtime)
        pending = {
            task.options(num_cpus=c.num_cpus, num_gpus=c.num_gpus, max_retries=1).remote(
                fn_ref, dict(c.config), runtime_ref): c
            for c in todo
        }
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                cell = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the worker died (killed, out of memory) after its retry
                    outcome = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(), math.nan)
                record(cell, outcome)
                bar.set_postfix_str(cell.name, refresh=False)
                bar.update()
    finally:
        if started_here:
            ray.shutdown()


def mean_std(values: Sequence[float]) -> tuple:
    """``(mean, sample standard deviation, n)`` of the finite values (std ``nan`` below two values)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return (math.nan, math.nan, 0)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    return (mean, std, n)


def format_mean_std(values: Sequence[float], fmt: str = ".4f") -> str:
    """``"0.1234"`` for one value, ``"0.1234 ± 0.0056"`` for several (sample std), ``"—"`` for none."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "—"
    if n == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


def fold_seeds(records: Sequence[Mapping], *, by: Sequence[str]) -> List[dict]:
    """Folds the records of several seeds into one row per ``by`` key (in order of first appearance).

    Each row is the first record with every numeric field that varies replaced by its mean over the group (other
    fields kept from the first record), ``"n_seeds"`` the group's size, and ``"std"`` = ``{field: sample std}`` for
    groups of two or more; report code shows ``mean ± std`` with :func:`format_mean_std` / :func:`pm`.
    """
    groups: Dict[tuple, List[Mapping]] = {}
    for r in records:
        groups.setdefault(tuple(json.dumps(r.get(k), sort_keys=True) for k in by), []).append(r)
    rows = []
    for group in groups.values():
        row = dict(group[0])
        row["n_seeds"] = len(group)
        row["std"] = {}
        for key, value in group[0].items():
            if key in by or key == "seed" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            values = [g.get(key) for g in group if isinstance(g.get(key), (int, float))]
            if len(set(values)) <= 1:  # one seed, or the same value in all: kept as it is (ints stay ints)
                continue
            mean, std, n = mean_std(values)
            if n:
                row[key] = mean
                if n > 1:
                    row["std"][key] = std
        rows.append(row)
    return rows


def pm(row: Mapping, key: str, fmt: str = ".4f", missing: str = "–") -> str:
    """``row[key]`` formatted, with ``± std`` where :func:`fold_seeds` folded several seeds."""
    value = row.get(key)
    if value is None:
        return missing
    std = row.get("std", {}).get(key)
    return format(value, fmt) + ("" if std is None else f" ± {format(std, fmt)}")


def describe_environments(records: Iterable[Mapping]) -> str:
    """One line naming where the given cells ran, from the environment recorded in their ``"_cell"`` blocks
    (:func:`environment`): each distinct machine and library set with its cell count."""
    from collections import Counter

    groups: Counter = Counter()
    for record in records:
        meta = record.get(_META, {})
        if "torch" not in meta:
            key = f"host {meta.get('host', 'unknown')}, environment not recorded"
        else:
            gpu = f", GPU {meta['gpu']}" if meta.get("gpu") else ", no GPU"
            key = (f"{meta['cpu']} ({meta['cpus']} cores, {meta['torch_threads']} torch threads){gpu}; "
                   f"Python {meta['python']}, torch {meta['torch']}, numpy {meta['numpy']}, opacus {meta['opacus']}, "
                   f"unsplit {meta['unsplit']}")
        groups[key] += 1
    return "; ".join(f"{n} cell{'s' if n > 1 else ''}: {key}" for key, n in groups.most_common())


def add_grid_arguments(parser, *, seeds: Optional[str] = "0") -> None:
    """Adds the options every grid benchmark shares: ``--seeds`` (unless ``seeds`` is ``None``), ``--executor``,
    ``--address``, ``--ray-cpus`` and ``--recompute``."""
    if seeds is not None:
        parser.add_argument("--seeds", "--seed", default=_int_list(seeds), type=_int_list,
                            help="comma-separated seeds (reports show mean ± std over them)")
    parser.add_argument("--executor", choices=EXECUTORS, default="local", type=_executor,
                        help="local: one process; ray: one Ray task per cell (pip install -e '.[ray]')")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join ('auto': the running one); default: start a local one")
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray cluster (default: all)")
    parser.add_argument("--recompute", action="store_true", help="rerun cells that already have results")


def grid_options(args) -> Dict[str, Any]:
    """:func:`run_grid` keyword arguments from the options of :func:`add_grid_arguments` (and ``--quiet``)."""
    return {"executor": args.executor, "address": args.address, "num_cpus": args.ray_cpus,
            "recompute": args.recompute, "progress": not getattr(args, "quiet", False)}


def _executor(name: str) -> str:
    """``--executor``'s type: refuses ``ray`` at parse time, before any work, when Ray is not installed."""
    import argparse
    import importlib.util

    if name == "ray" and importlib.util.find_spec("ray") is None:
        raise argparse.ArgumentTypeError("Ray is not installed: pip install -e '.[ray]'")
    return name


def _int_list(text: str) -> List[int]:
    import argparse

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def report_failures(summary: Optional[GridSummary]) -> int:
    """A benchmark's exit status: prints the one-line summary and, if cells failed, one line naming them on stderr;
    returns 1 if any cell failed, else 0."""
    import sys

    if summary is None:
        return 0
    print(summary)
    if summary.failed:
        print(f"error: {len(summary.failed)} cell(s) failed (their JSON files hold the error and traceback): "
              f"{', '.join(summary.failed[:5])}{' ...' if len(summary.failed) > 5 else ''}", file=sys.stderr)
        return 1
    return 0


def run_benchmark(args, cells: Iterable[Cell], fn: Callable, *, runtime: Mapping[str, Any], report: Callable) -> int:
    """A grid benchmark's ``main`` after parsing: runs ``cells`` into ``ResultStore(args.out)`` (unless
    ``args.report_only``), prints what ``report(args)`` returns and gives the exit status of :func:`report_failures`."""
    summary = None
    if not getattr(args, "report_only", False):
        summary = run_grid(cells, fn, store=ResultStore(args.out), runtime=runtime, **grid_options(args))
    print(report(args))
    return report_failures(summary)
