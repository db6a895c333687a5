#!/usr/bin/env python
"""FSHA's malicious client (Pasquini et al., CCS'21, the official ``ClientSideAttack``) against the official code,
both scored by the same independent classifier.

Both run the official notebook's setting on MNIST: one malicious client (target class 1, poison class 10) and ten
honest clients sharing the client parts in turn, batch 256, Adam 1e-4, for ``--iters`` rounds. They run chunk by
chunk (``--chunk`` rounds, even), alternately ours then the official code's, so their seconds per round are measured
side by side under the same load (each side's training seconds: ours includes loading its checkpoint, the official
code's includes tracing its ``tf.function`` steps; a chunk re-run after an interruption is not timed).

After every chunk, 256 samples of each generator are scored by one classifier trained on the real MNIST training set
(:func:`unsplit.metrics.train_classifier`, seed 0), which neither attack touches: the rate at which it labels them as
class 1, their mean squared distance to the class-1 mean image beside the other classes' means, and the fraction
nearest to the class-1 mean; beside the honest task's test accuracy. At the end ours also trains the same model
without the malicious client (the honest accuracy without the attack).

Resumable: both runs checkpoint under ``--checkpoints`` after every chunk; the cell (``OUT/cells/mnist_i<N>_s<seed>``)
and ``OUT/samples_i<N>_s<seed>.png`` (32 samples of each generator at the end) are written when the last chunk is
done; ``report.md`` and ``curves.png`` are rebuilt from the cells.
The official code restarts its batch iterator on every call, so each of its chunks reshuffles the data.

    python benchmarks/fsha_client_vs_official.py --data-dir DATA --iters 1000 \\
        --official-repo PATH/TO/SplitNN_FSHA --official-python PATH/TO/tf/bin/python
    python benchmarks/fsha_client_vs_official.py --report-only
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from unsplit.base import GeneratedSamples
from unsplit.cli import make_parser, run_main
from unsplit.data import default_data_dir, load_dataset
from unsplit.fsha_client import GANClientConfig, GANClientRunConfig, run_gan_client
from unsplit.grid import Cell, ResultStore, add_grid_arguments, run_benchmark
from unsplit.metrics import train_classifier
from unsplit.util import atomic_save, atomic_save_figure, atomic_write_json, atomic_write_text, resolve_device

DRIVER = Path(__file__).resolve().parent / "official" / "fsha_client_official.py"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SCORES = ("target_rate", "nearest_mean_rate", "distance_to_target_mean", "distance_to_other_means")


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--iters", type=int, default=5000, help="rounds (the official notebook's 5,000)")
    p.add_argument("--chunk", type=int, default=50, help="rounds per chunk (even)")
    p.add_argument("--adam-clock", choices=("official", "own"), default="official",
                   help="our generator's Adam counts every client's turn, as the official code's one Adam "
                        "(default), or only its own steps (the library's default)")
    p.add_argument("--official-repo", type=Path, default=os.environ.get("UNSPLIT_FSHA_OFFICIAL"),
                   help="a checkout of pasquini-dario/SplitNN_FSHA ($UNSPLIT_FSHA_OFFICIAL)")
    p.add_argument("--official-python", default=os.environ.get("UNSPLIT_TF_PYTHON"),
                   help="a Python with TensorFlow ($UNSPLIT_TF_PYTHON)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/fsha_client"))
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints/fsha_client"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    if args.iters < 2 or args.chunk < 2 or args.chunk % 2 or args.iters % args.chunk:
        p.error("--chunk must be even and >= 2, and --iters a multiple of it")
    if not args.report_only:
        if args.official_repo is None or not (Path(args.official_repo) / "ClientSideAttack" / "server.py").is_file():
            p.error("--official-repo must be a checkout of pasquini-dario/SplitNN_FSHA (with ClientSideAttack/)")
        if not args.official_python or shutil.which(args.official_python) is None:
            p.error("--official-python must name a Python with TensorFlow")
        raw = Path(args.data_dir) / "MNIST" / "raw"
        missing = [f for f in MNIST_FILES if not (raw / f).exists() and not (raw / f"{f}.gz").exists()]
        if missing:
            p.error(f"MNIST's raw files are missing under {raw}: {', '.join(missing)}")
    return args


def _classifier(x: torch.Tensor, y: torch.Tensor, path: Path, device, seed: int):
    """The independent classifier, trained once and kept beside the checkpoints."""
    if path.exists():
        return torch.load(path, map_location=device, weights_only=False)
    net = train_classifier(x, y, device=device, seed=seed)
    atomic_save(net, path)
    return net


def _turns_done(checkpoint: Path) -> int:
    """The honest turns a training checkpoint holds (0 without one)."""
    return torch.load(checkpoint, weights_only=False)["done"] if checkpoint.exists() else 0


def _official(runtime: dict, state: Path, upto: int, seed: int) -> tuple:
    """The official code up to ``upto`` rounds in all (resumed from ``state``): (its run, its samples)."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = state / "samples.npz"
    cmd = [runtime["official_python"], str(DRIVER), "--repo", str(runtime["official_repo"]), "--mnist",
           str(Path(runtime["data_dir"]) / "MNIST" / "raw"), "--iters", str(upto), "--seed", str(seed),
           "--out", str(out), "--state", str(state)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"the official code failed: {tail[-1] if tail else f'exit {done.returncode}'}")
    samples = torch.from_numpy(np.load(out)["samples"]).permute(0, 3, 1, 2).float()
    return json.loads(lines[-1]), samples


def run_cell(c: dict, *, data_dir, checkpoints, out, official_repo, official_python, device, recompute: bool,
             progress: bool) -> dict:
    """Both attacks chunk by chunk to ``c["iters"]`` rounds, each chunk scored; resumes from ``checkpoints``."""
    device = resolve_device(device)
    runtime = {"data_dir": data_dir, "official_repo": official_repo, "official_python": official_python}
    x, y = load_dataset("mnist", data_dir=data_dir, train=True, download=False)
    xt, yt = load_dataset("mnist", data_dir=data_dir, train=False, download=False)
    x, xt = x * 2 - 1, xt * 2 - 1  # the official code's [-1, 1]
    root = Path(checkpoints) / f"mnist{_suffix(c)}_c{c['chunk']}_s{c['seed']}"
    if recompute and root.exists():
        shutil.rmtree(root)
    (root / "official").mkdir(parents=True, exist_ok=True)
    classifier = _classifier(x, y, root / "classifier.pt", device, c["seed"])
    chunks = _logged_chunks(root, c)
    todo = range(c["chunk"] * (len(chunks) + 1), c["iters"] + 1, c["chunk"])
    for upto in tqdm(todo, desc="chunks", disable=not progress):
        chunks.append(_run_chunk(c, upto, root, runtime, classifier, (x, y, xt, yt), device))
        atomic_write_json(root / "chunks.json", chunks)
    final = GANClientRunConfig(_attack(c), iterations=c["iters"], checkpoint=str(root / "ours.pt"),
                               progress=progress)
    ours = run_gan_client(x, y, xt, yt, final, device=device, seed=c["seed"], classifier=classifier)
    theirs = torch.from_numpy(np.load(root / "official" / "samples.npz")["samples"]).permute(0, 3, 1, 2)
    _samples_figure(ours.artefacts["samples"].images[:32], theirs[:32],
                    Path(out) / f"samples{_suffix(c)}_i{c['iters']}_s{c['seed']}.png")
    return {"dataset": "mnist", "iterations": c["iters"], "chunk": c["chunk"], "seed": c["seed"],
            "adam_clock": c["adam_clock"], "chunks": chunks,
            "baselines": ours.baselines, "device": str(device), "threads": torch.get_num_threads()}


def _suffix(c: dict) -> str:
    return "" if c["adam_clock"] == "official" else f"_{c['adam_clock']}"


def _attack(c: dict) -> GANClientConfig:
    """Our attacker: the official settings; G's Adam counting the 11 clients' turns (``official``) or its own."""
    return GANClientConfig(adam_clock=11 if c["adam_clock"] == "official" else None)


def _logged_chunks(root: Path, c: dict) -> list:
    """The chunks logged so far, checked against this run's chunk size and length."""
    log = root / "chunks.json"
    chunks = json.loads(log.read_text()) if log.exists() else []
    rounds = [ch["rounds"] for ch in chunks]
    if rounds != [c["chunk"] * (i + 1) for i in range(len(rounds))] or (rounds and rounds[-1] > c["iters"]):
        raise ValueError(f"{root} holds chunks of another run (rounds {rounds[:3]}...): use --recompute or "
                         "another --checkpoints")
    return chunks


def _run_chunk(c: dict, upto: int, root: Path, runtime: dict, classifier, data: tuple, device) -> dict:
    """Ours, then the official code, to ``upto`` rounds; both scored. A chunk one of them had already run before an
    interruption is scored but not timed."""
    x, y, xt, yt = data
    config = GANClientRunConfig(_attack(c), iterations=upto, baseline=False, checkpoint=str(root / "ours.pt"),
                                checkpoint_every=10 * c["chunk"])
    before = torch.load(root / "ours.pt", weights_only=False)["done"] if (root / "ours.pt").exists() else 0
    ours = run_gan_client(x, y, xt, yt, config, device=device, seed=c["seed"], classifier=classifier)
    official, samples = _official(runtime, root / "official", upto, c["seed"])
    theirs = GeneratedSamples(samples, target=1).score(classifier, x, y, device=device)
    timed = before == 10 * (upto - c["chunk"]) and official["rounds"] == c["chunk"]
    return {"rounds": upto, "timed": timed,
            "ours": {**{k: ours.metrics[k] for k in SCORES}, "task_accuracy": ours.metrics["task_accuracy"],
                     "seconds_per_round": ours.artefacts["train_seconds"] / c["chunk"] if timed else None},
            "official": {**{k: theirs[k] for k in SCORES}, "task_accuracy": official["test_accuracy"],
                         "seconds_per_round": official["seconds"] / c["chunk"] if timed else None}}


def _samples_figure(ours: torch.Tensor, theirs: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    for ax, images, title in zip(axes, (ours, theirs), ("unsplit", "official code")):
        ax.imshow(make_grid((images + 1) / 2, nrow=8, padding=1, pad_value=1).permute(1, 2, 0))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    atomic_save_figure(fig, path)


def build_report(args) -> str:
    cells = ResultStore(args.out).records("cells/*.json")
    lines = ["MNIST, target class 1, one malicious and ten honest clients, batch 256, Adam 1e-4. Generated samples "
             "(256 per attack) scored by the same independent classifier trained on the real training set. "
             "Columns per attack: target rate (the classifier labels the sample 1), nearest-mean rate (nearest class "
             "mean image is class 1's), mean squared distance per pixel ([-1, 1]) to the class-1 mean / to the other "
             "classes' means, honest test accuracy, seconds per round (same machine, chunks alternated).", ""]
    head = "| rounds | attack | target rate | nearest-mean rate | d(class 1) | d(others) | test accuracy | s/round |"
    for d in cells:
        b = d["baselines"]
        clock = "every client's turn, as the official Adam" if d["adam_clock"] == "official" else "its own steps"
        lines += [f"**{d['iterations']} rounds, seed {d['seed']}, our generator's Adam counting {clock}**: "
                  "`python benchmarks/fsha_client_vs_official.py "
                  f"--data-dir DATA --iters {d['iterations']} --chunk {d['chunk']} --seeds {d['seed']} "
                  f"--adam-clock {d['adam_clock']} "
                  "--official-repo SplitNN_FSHA --official-python TF_PYTHON`. "
                  f"Baselines: chance {b['baseline_chance']:.2f}; uniform noise: target rate "
                  f"{b['baseline_noise_target_rate']:.3f}, nearest-mean rate "
                  f"{b['baseline_noise_nearest_mean_rate']:.3f}; "
                  f"honest test accuracy without the malicious client {b['task_accuracy']:.4f} "
                  f"(ours, {d['iterations']} rounds).", "", head, "|---|---|---|---|---|---|---|---|"]
        every = -(-len(d["chunks"]) // 10)  # about ten rows per attack, the last chunk always among them
        for chunk in d["chunks"][::-1][::every][::-1]:
            for who in ("ours", "official"):
                m = chunk[who]
                lines.append(f"| {chunk['rounds']} | {who} | {m['target_rate']:.3f} | {m['nearest_mean_rate']:.3f} | "
                             f"{m['distance_to_target_mean']:.3f} | {m['distance_to_other_means']:.3f} | "
                             f"{m['task_accuracy']:.4f} | "
                             f"{'—' if m['seconds_per_round'] is None else format(m['seconds_per_round'], '.2f')} |")
        ratio = sorted(ch["official"]["seconds_per_round"] / ch["ours"]["seconds_per_round"]
                       for ch in d["chunks"] if ch["timed"])
        if ratio:
            lines += ["", f"Official seconds per round ÷ ours, over the {len(ratio)} chunks both ran in one go: "
                          f"median {ratio[len(ratio) // 2]:.2f}× (min {ratio[0]:.2f}×, max {ratio[-1]:.2f}×).", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(args.out / "report.md", "\n".join(lines) + "\n")
    _plot(cells, args.out / "curves.png")
    return str(path)


def _plot(cells: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not cells:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for d in cells:
        rounds = [ch["rounds"] for ch in d["chunks"]]
        for who, style in (("ours", "-"), ("official", "--")):
            ax.plot(rounds, [ch[who]["target_rate"] for ch in d["chunks"]], style,
                    label=f"{who} (seed {d['seed']})")
        ax.axhline(d["baselines"]["baseline_chance"], color="grey", lw=0.8, ls=":", label="chance")
    ax.set(xlabel="round", ylabel="target rate (independent classifier)", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    key = {"iters": args.iters, "chunk": args.chunk, "adam_clock": args.adam_clock}
    cells = [Cell(f"cells/mnist{_suffix(key)}_i{args.iters}_s{seed}", {**key, "seed": seed}) for seed in args.seeds]
    runtime = {"data_dir": args.data_dir, "checkpoints": args.checkpoints.resolve(), "out": args.out.resolve(),
               "recompute": args.recompute,
               "official_repo": args.official_repo, "official_python": args.official_python,
               "device": args.device, "progress": not args.quiet}
    return run_benchmark(args, cells, run_cell, runtime=runtime, report=build_report)


if __name__ == "__main__":
    sys.exit(run_main(main))
