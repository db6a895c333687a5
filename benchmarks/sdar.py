#!/usr/bin/env python
"""SDAR (Zhu et al., NDSS'25) beside the official code's logs.

Each cell is one run as the official driver makes it (``scripts/run_sdar.py``): CIFAR-10's 60,000 training and test
images pooled and split in half (the client's private set and the server's auxiliary set, disjoint); the victim
(ResNet-20 or PlainNet-20 split at ``level``, vanilla split learning) trained with Adam(1e-3) on batches of 128 while
SDAR (or its ``naive_sda`` ablation) attacks, one attack step per training step. Recorded: the official
``attack_loss`` (the running mean over 100 iterations of the reconstruction MSE of the current private training
batch, pixels in [0, 1]) every 100 iterations, seconds per iteration, and the reconstruction of the client's first
1,024 private images sent at inference after training, beside the mean auxiliary image and the class means.

The official numbers are the five runs of each setting in the official repository's logs
(``unsplit/sdar_official_logs.json``, with their paths); ``report.md`` puts ours beside their mean at every
logged iteration both ran. A cell resumes from its checkpoint (``--checkpoints``), so a long run spans sittings, and
``--iters`` may grow: a longer cell continues the shorter one's checkpoint.

    python benchmarks/sdar.py --data-dir ../shared/data --models resnet20 --levels 7 --iters 3000
    python benchmarks/sdar.py --data-dir ../shared/data --models resnet20 --levels 7 --variants naive_sda
    python benchmarks/sdar.py --data-dir ../shared/data --models resnet20 --levels 7 --precision bf16
    python benchmarks/sdar.py --report-only
"""
from __future__ import annotations

import statistics
from pathlib import Path

import torch

from unsplit.cli import make_parser, run_main
from unsplit.data import default_data_dir
from unsplit.grid import Cell, ResultStore, add_grid_arguments, run_benchmark
from unsplit.sdar import (
    SDARConfig,
    SDARRunConfig,
    official_log,
    run_sdar,
    running_means,
    sdar_data,
)
from unsplit.util import atomic_save_figure, atomic_write_text, resolve_device

VARIANTS = ("sdar", "naive_sda")
MODELS = ("resnet20", "plainnet20")


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--models", default="resnet20", help=f"comma-separated: {','.join(MODELS)}")
    p.add_argument("--levels", default="7", help="comma-separated split levels (3-9)")
    p.add_argument("--variants", default="sdar", help=f"comma-separated: {','.join(VARIANTS)}")
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32 (the official code's) or bf16 (autocast; the run's name gets _bf16)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sdar"))
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints/sdar"))
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    args.models, args.variants = _choices(p, args.models, MODELS, "--models"), _choices(p, args.variants, VARIANTS,
                                                                                      "--variants")
    try:
        args.levels = [int(v) for v in args.levels.split(",") if v.strip()]
    except ValueError:
        p.error(f"--levels: expected comma-separated integers, got {args.levels!r}")
    if not args.levels or any(not 3 <= v <= 9 for v in args.levels):
        p.error("--levels must lie in 3-9")
    if args.iters < 1 or args.checkpoint_every < 1 or args.batch_size < 2:
        p.error("--iters and --checkpoint-every must be >= 1, --batch-size >= 2")
    return args


def _choices(p, text, allowed, flag):
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        p.error(f"{flag}: choose from {', '.join(allowed)} (got {text!r})")
    return values


def _run(c: dict) -> str:
    """The run's name without its length: ``<model>_l<level>_<variant>[_b<batch>][_bf16]_s<seed>`` (its checkpoint's
    name too)."""
    return f"{_group(c)}_s{c['seed']}"


def _group(c: dict) -> str:
    """The runs that differ only in their seed: ``<model>_l<level>_<variant>[_b<batch>][_bf16]``."""
    batch = f"_b{c['batch_size']}" if c.get("batch_size", 128) != 128 else ""
    precision = "_bf16" if c.get("precision", "fp32") != "fp32" else ""
    return f"{c['model']}_l{c['level']}_{c['variant']}{batch}{precision}"


def grid_cells(args) -> list:
    extra = {**({} if args.batch_size == 128 else {"batch_size": args.batch_size}),
             **({} if args.precision == "fp32" else {"precision": args.precision})}
    configs = [{"model": m, "level": lv, "variant": v, "iters": args.iters, "seed": s, **extra}
               for s in args.seeds for m in args.models for lv in args.levels for v in args.variants]
    return [Cell(f"cells/{_run(c)}_i{c['iters']}", c) for c in configs]


def run_cell(c: dict, *, data_dir, checkpoints, checkpoint_every: int, recompute: bool, device,
             progress: bool) -> dict:
    device = resolve_device(device)
    (xp, yp), (xa, ya) = sdar_data(data_dir)
    Path(checkpoints).mkdir(parents=True, exist_ok=True)
    checkpoint = Path(checkpoints) / f"{_run(c)}.pt"
    if recompute and checkpoint.exists():
        checkpoint.unlink()
    attack = SDARConfig() if c["variant"] == "sdar" else SDARConfig().ablation(c["variant"])
    run = SDARRunConfig(model=c["model"], level=c["level"], attack=attack, iterations=c["iters"],
                        batch_size=c.get("batch_size", 128), checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                        precision=c.get("precision", "fp32"), progress=progress)
    report = run_sdar(xp, yp, xa, ya, run, device=device, seed=c["seed"])
    history = report.artefacts["attack"].history
    return {**c, "run": _run(c), **report.metrics, "curve": report.artefacts["curve"],
            "task_curve": running_means(report.artefacts["task_losses"]),
            "decoder_curve": running_means(history["decoder_mse"]),
            "simulator_dis_curve": running_means(history["simulator_dis_loss"]), "baselines": report.baselines,
            "device": str(device), "threads": torch.get_num_threads(), "channels_last": report.config["channels_last"]}


def official_curves(records) -> dict:
    """The official five runs of each record's setting: ``{setting: {iteration: [5 values]}}``."""
    out = {}
    for r in records:
        runs = official_log("attack_loss", model=r["model"], level=r["level"], variant=r["variant"])
        if runs is not None:
            out[_setting(r)] = runs
    return out


def build_report(args) -> Path:
    cells = sorted(ResultStore(args.out).records("cells/*.json"), key=lambda r: (r["run"], r["iters"]))
    official = official_curves(cells)
    longest = {}
    for r in cells:  # the longest cell of each run holds the whole curve
        longest[r["run"]] = r
    runs = {**longest, **_seed_means(longest)}
    lines = ["SDAR (Zhu et al., NDSS'25), vanilla split learning, CIFAR-10: the official `attack_loss` (the running "
             "mean over 100 iterations of the reconstruction MSE of the current private training batch, pixels in "
             "[0, 1]) at the logged iterations, ours beside the mean ± std of the official code's five runs "
             "(`unsplit/sdar_official_logs.json`). Command: `python benchmarks/sdar.py --data-dir DATA --models M "
             "--levels L --variants V --iters N [--precision bf16]` (run = M_lL_V[_bf16]_sSEED; a setting run with "
             "several seeds also gets their mean, judged like a run).", ""]
    marks = (99, 499, 999, 1999, 2999, 4999, 9999, 19999)
    lines += ["| run | iterations | " + " | ".join(f"@{m + 1}" for m in marks) + " | s/it |",
              "|---" * (len(marks) + 3) + "|"]
    for run, r in runs.items():
        ref = official.get(_setting(r))
        cols = []
        for m in marks:
            ours = r["curve"].get(str(m))
            theirs = _official_at(ref, m)
            if ours is None and theirs is None:
                cols.append("–")
                continue
            text = "–" if ours is None else f"{ours:.4f}"
            if theirs is not None:
                mean, sd = theirs
                text += f" ({mean:.4f} ± {sd:.4f}" + (f", {100 * (ours - mean) / mean:+.0f}%)" if ours is not None
                                                      else ")")
            cols.append(text)
        lines.append(f"| {run} | {r['iterations']} | " + " | ".join(cols) + f" | {r['seconds_per_iteration']:.2f} |")
    lines += ["", "Every logged iteration both ran (99, 199, ...): how many of ours lie within ±20% of the official "
                  "five-run mean, the largest deviation, how many lie within the official runs' range (lowest to "
                  "highest of the five; a sixth run drawn alike would land inside about 4 times in 6), and, as the "
                  "scale of run-to-run variation, the largest deviation of an official run from the mean of the "
                  "other four at the same iterations (as ours is judged against a mean it is not part of).", "",
              "| run | within ±20% | largest deviation | within the official range "
              "| official runs' largest deviation |",
              "|---|---|---|---|---|"]
    for run, r in runs.items():
        row = _agreement(r["curve"], official.get(_setting(r)) or {})
        if row:
            lines.append(f"| {run} | {row} |")
    lines += ["", "After training, the client's first 1,024 private images sent at inference, decoded by the server "
                  "(conditioned on its own predicted labels): MSE / PSNR / SSIM, beside the mean auxiliary image and "
                  "the class means of the auxiliary images (what the labels alone give).", "",
              "| run | MSE | PSNR | SSIM | mean image MSE | class means MSE |", "|---|---|---|---|---|---|"]
    for run, r in runs.items():
        b = r["baselines"]
        lines.append(f"| {run} | {r['mse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {b['mse']:.4f} | "
                     f"{b['class_mean_mse']:.4f} |")
    lines += _side_tables(runs, marks)
    args.out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(args.out / "report.md", "\n".join(lines) + "\n")
    _plot(longest, official, args.out / "curves.png")
    return path


def _agreement(curve: dict, ref: dict) -> str:
    """The agreement columns of one run's curve with the official runs ``ref`` (``{iteration: [values]}``): within
    ±20% of their mean, the largest deviation, within their range, and the largest leave-one-out deviation of one of
    them (each run against the mean of the others)."""
    shared = sorted(int(i) for i in curve if int(i) in ref)
    if not shared:
        return ""
    gaps = {i: curve[str(i)] / statistics.mean(ref[i]) - 1 for i in shared}
    worst = max(shared, key=lambda i: abs(gaps[i]))
    inside = sum(abs(gaps[i]) <= 0.2 for i in shared)
    in_range = sum(min(ref[i]) <= curve[str(i)] <= max(ref[i]) for i in shared)
    own = {(i, k): v / statistics.mean(ref[i][:k] + ref[i][k + 1:]) - 1  # each run against the others' mean
           for i in shared for k, v in enumerate(ref[i])}
    i_own, k_own = max(own, key=lambda ik: abs(own[ik]))
    return (f"{inside} of {len(shared)} | {100 * gaps[worst]:+.0f}% at iteration {worst} | {in_range} of "
            f"{len(shared)} | {100 * own[i_own, k_own]:+.0f}% (run {k_own + 1} at iteration {i_own})")


#: the other curves a cell stores: ``{key: (the official quantity it is compared with, what it is, decimals shown)}``
SIDES = {"task_curve": ("fg_loss", "the victim's task loss on its training batches", 3),
         "decoder_curve": ("d_total_loss", "the decoder's MSE on the simulator's features of the auxiliary batch "
                                           "(the official `d_total_loss` adds lambda2 × its adversarial loss, under "
                                           "1e-5)", 4),
         "simulator_dis_curve": ("e_dis_loss", "the simulator discriminator's loss", 3)}


def _side_tables(runs: dict, marks) -> list:
    """The victim's and the attacker's sides (:data:`SIDES`): each curve (running means of 100) beside the official
    five-run mean of its quantity, for the runs that recorded it: whether the client trains as in the official runs,
    and which of the attack's parts departs from them where its ``attack_loss`` does."""
    lines = []
    for key, (metric, what, digits) in SIDES.items():
        rows = []
        for run, r in runs.items():
            if key not in r:
                continue
            ref = official_log(metric, model=r["model"], level=r["level"], variant=r["variant"])
            cols = []
            for m in marks:
                ours, theirs = r[key].get(str(m)), _official_at(ref, m)
                text = "–" if ours is None else f"{ours:.{digits}f}"
                cols.append(text + (f" ({theirs[0]:.{digits}f})" if theirs is not None else ""))
            rows.append(f"| {run} | " + " | ".join(cols) + " |")
        if rows:
            lines += ["", f"{what[0].upper()}{what[1:]} (running mean over 100 iterations), ours beside the official "
                          f"five-run mean of `{metric}` in parentheses.", "",
                      "| run | " + " | ".join(f"@{m + 1}" for m in marks) + " |", "|---" * (len(marks) + 1) + "|",
                      *rows]
    return lines


def _seed_means(longest: dict) -> dict:
    """Per setting run with two or more seeds, one record of their means (``<setting> (mean of N seeds)``): the
    curves at the iterations every seed logged, the inference-time scores and the baselines."""
    groups: dict = {}
    for r in longest.values():
        groups.setdefault(_group(r), []).append(r)
    out = {}
    for setting, rs in groups.items():
        if len(rs) < 2:
            continue
        mean = {k: statistics.mean(r[k] for r in rs) for k in ("mse", "psnr", "ssim", "seconds_per_iteration")}
        record = {**rs[0], **mean, "iterations": min(r["iterations"] for r in rs), "curve": _mean_curve(rs, "curve"),
                  "baselines": {k: statistics.mean(r["baselines"][k] for r in rs) for k in ("mse", "class_mean_mse")}}
        for key in SIDES:
            record.pop(key, None)
            if all(key in r for r in rs):
                record[key] = _mean_curve(rs, key)
        out[f"{setting} (mean of {len(rs)} seeds)"] = record
    return out


def _mean_curve(rs, key: str) -> dict:
    """The mean of the runs' ``key`` curves at the iterations every run logged."""
    shared = set.intersection(*(set(r[key]) for r in rs))
    return {i: statistics.mean(r[key][i] for r in rs) for i in sorted(shared, key=int)}


def _setting(r) -> str:
    """The official experiment a cell compares with: ``<model>_l<level>_<variant>``."""
    return f"{r['model']}_l{r['level']}_{r['variant']}"


def _official_at(ref, m):
    if ref is None or m not in ref:
        return None
    values = ref[m]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _plot(longest: dict, official: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not longest:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (run, r) in enumerate(longest.items()):
        colour = f"C{k}"
        its = sorted(int(i) for i in r["curve"])
        ax.plot([i + 1 for i in its], [r["curve"][str(i)] for i in its], color=colour, label=f"{run} (ours)")
        ref = official.get(_setting(r))
        if ref is not None:
            shown = max(max(its, default=0) + 1, 100) * 3  # the official curve a little past ours
            xs = [i for i in sorted(ref) if i < shown]
            means = [_official_at(ref, i)[0] for i in xs]
            ax.plot([i + 1 for i in xs], means, color=colour, ls="--", label=f"{_setting(r)} (official, mean of 5)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("attack MSE (training batch, running mean of 100)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime = {"data_dir": args.data_dir, "checkpoints": args.checkpoints, "checkpoint_every": args.checkpoint_every,
               "recompute": args.recompute, "device": args.device, "progress": not args.quiet}
    return run_benchmark(args, grid_cells(args), run_cell, runtime=runtime, report=build_report)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
