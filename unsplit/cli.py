"""Shared pieces of the command-line demos: common options, error handling, trained-model cache, output dirs."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .data import DATASETS, DataUnavailable, default_data_dir, load_dataset
from .models import build_model, split
from .training import evaluate, train_split
from .util import atomic_save, resolve_device, unique_dir

__all__ = ["UsageError", "add_common_arguments", "run_main", "trained_model", "output_dir", "log"]


class UsageError(ValueError):
    """A bad command-line value; reported in one line with exit code 2."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2 (argparse's default prints the whole usage block)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser that shows defaults in ``--help`` and reports usage errors in one line (exit 2)."""
    return _Parser(description=description, formatter_class=_Formatter)


def add_common_arguments(parser: argparse.ArgumentParser, *, epochs: int = 10) -> None:
    """Options every demo shares (data, output, seed, device, training cache, verbosity)."""
    parser.add_argument("dataset", choices=DATASETS, help="dataset")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="dataset root ($UNSPLIT_DATA)")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default: results/<run name>)")
    parser.add_argument("--overwrite", action="store_true", help="write into --out even if it holds results")
    parser.add_argument("--seed", type=int, default=0, help="seed for models, data order and attacks")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to compute")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-download", action="store_true", help="never try to download missing data")
    parser.add_argument("--epochs", type=int, default=epochs, help="split-learning training epochs")
    parser.add_argument("--defense", action="append", default=None, metavar="NAME[:STRENGTH]",
                        help="defense used in split learning, repeatable: gaussian:SIGMA, laplace:SCALE, "
                             "nopeek:ALPHA, dpsgd:NOISE_MULTIPLIER, label_dp:EPSILON, topk:RATIO, maxnorm, none")


def log(args, message: str) -> None:
    """Prints a status line (stdout), unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(message, flush=True)


def run_main(main: Callable[[Optional[list]], int], argv: Optional[list] = None) -> int:
    """Runs a demo's ``main``, turning expected failures into one-line messages and exit code 2."""
    try:
        return main(argv)
    except (UsageError, DataUnavailable, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def output_dir(args, default_name: str) -> Path:
    """The results directory: ``--out`` (refused if it holds results, unless ``--overwrite``), or a fresh
    ``results/<default_name>[-k]`` that never clobbers an earlier run."""
    if args.out is None:
        return unique_dir(Path("results") / default_name)
    out = Path(args.out)
    if (out / "metrics.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out} already holds results (metrics.json); pass --overwrite or another --out")
    return out


def device_of(args) -> torch.device:
    try:
        return resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def defense_specs(args) -> list:
    """The ``--defense`` values, without the no-op ``none``."""
    return [d for d in (getattr(args, "defense", None) or []) if d != "none"]


def trained_model(
    args,
    device: torch.device,
    *,
    test: Tuple[torch.Tensor, torch.Tensor],
    split_depth: Optional[int] = None,
    defenses: Sequence = (),
) -> Tuple[nn.Sequential, Dict[str, float]]:
    """The split model trained as in the reference (client + server, 10 epochs), from the cache when possible.

    Without a defense the cache key is (dataset, epochs, seed): training is the same whatever the split depth (the
    cut does not change the joint gradient), so one checkpoint serves every depth. With defenses (``--defense``) the
    model is trained split at ``split_depth`` with them, and the key adds the depth and the defenses.
    ``--checkpoint PATH`` chooses the file, ``--retrain`` ignores an existing one.

    Returns:
        The model (on ``device``, eval mode) and ``{"test_accuracy", "train_seconds", "from_checkpoint", ...}``
        (``dp_epsilon`` when DP-SGD was used in this training run).
    """
    model = build_model(args.dataset)
    specs = defense_specs(args)
    suffix = f"_d{split_depth}_" + "_".join(s.replace(":", "-") for s in specs) if specs else ""
    path = args.checkpoint or Path("checkpoints") / f"{args.dataset}_epochs{args.epochs}_seed{args.seed}{suffix}.pt"
    info: Dict[str, float] = {}
    if Path(path).exists() and not args.retrain:
        try:
            state = torch.load(path, map_location="cpu")
            model.load_state_dict(state["model"])
        except Exception as exc:  # a foreign or corrupt file
            raise UsageError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0][:160]} (use --retrain)")
        if state.get("dataset") != args.dataset:
            raise UsageError(f"checkpoint {path} was trained on {state.get('dataset')!r}, not {args.dataset!r}")
        info = {"train_seconds": state.get("train_seconds"), "from_checkpoint": True, "epochs": state.get("epochs"),
                "dp_epsilon": state.get("dp_epsilon")}
        log(args, f"loaded trained model from {path}")
    else:
        x_train, y_train = load_dataset(
            args.dataset, data_dir=args.data_dir, train=True, download=not args.no_download,
            limit=getattr(args, "train_limit", None),
        )
        torch.manual_seed(args.seed)
        model = build_model(args.dataset)
        log(args, f"training the split model: {args.epochs} epochs on {len(y_train)} images ...")
        start = time.perf_counter()
        # Without a defense the cut does not change the gradients: train once, reuse at every depth.
        client, server = split(model, split_depth if specs else 0)
        train_split(client, server, x_train, y_train, epochs=args.epochs, device=device, seed=args.seed,
                    defenses=list(defenses), progress=not args.quiet)
        seconds = time.perf_counter() - start
        eps = [d.spent_epsilon() for d in defenses if hasattr(d, "spent_epsilon")]
        info = {"train_seconds": seconds, "from_checkpoint": False, "epochs": args.epochs,
                "dp_epsilon": eps[0] if eps else None}
        atomic_save(
            {"model": model.state_dict(), "dataset": args.dataset, "epochs": args.epochs, "seed": args.seed,
             "train_seconds": seconds, "defenses": specs, "split_depth": split_depth if specs else None,
             "dp_epsilon": info["dp_epsilon"]},
            path,
        )
        log(args, f"trained in {seconds:.1f} s; saved to {path}")
    model = model.to(device).eval()
    info["test_accuracy"] = evaluate(model, *test, device=device)
    info["checkpoint"] = str(path)
    return model, info


def train_mean_image(args, x_test: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean of the training images, ``(1, C, H, W)`` (a trivial reconstruction that knows the data
    distribution); the test split's mean if only the test split is on disk."""
    try:
        x_train, _ = load_dataset(args.dataset, data_dir=args.data_dir, train=True, download=False)
    except (DataUnavailable, OSError, RuntimeError):
        x_train = x_test
    return x_train.mean(dim=0, keepdim=True)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained-model cache file (default: checkpoints/<dataset>_epochs<E>_seed<S>.pt)")
    parser.add_argument("--retrain", action="store_true", help="train even if the checkpoint exists")
