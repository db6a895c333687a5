"""Shared pieces of the command-line demos: common options, error handling, trained-model cache, output dirs."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .data import DATASETS, DataUnavailable, default_data_dir, load_dataset
from .defenses import parse_defenses
from .experiments import TrainingCase, train_or_load
from .util import resolve_device, unique_dir

__all__ = ["UsageError", "add_common_arguments", "add_run_arguments", "run_main", "trained_model", "output_dir", "log",
           "finite_float", "check_defenses"]


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


def finite_float(text: str) -> float:
    """argparse type: a finite float (``nan`` and ``inf`` are usage errors, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def check_defenses(parser: argparse.ArgumentParser, specs: Sequence[str], *, num_classes: int = 10) -> List[str]:
    """Validates ``NAME[:STRENGTH]`` defense specs (a bad one is a one-line usage error, exit 2) and returns them
    without the no-op ``none``."""
    specs = [s.strip() for s in specs if s.strip() and s.strip() != "none"]
    try:
        parse_defenses(specs, num_classes=num_classes)
    except ValueError as exc:
        parser.error(str(exc))
    return specs


def add_common_arguments(parser: argparse.ArgumentParser, *, epochs: int = 10) -> None:
    """Options the inversion and label demos share: the dataset, :func:`add_run_arguments`, epochs, defenses."""
    parser.add_argument("dataset", choices=DATASETS, help="dataset")
    add_run_arguments(parser)
    parser.add_argument("--epochs", type=int, default=epochs, help="split-learning training epochs")
    parser.add_argument("--defense", action="append", default=None, metavar="NAME[:STRENGTH]",
                        help="defense used in split learning, repeatable: gaussian:SIGMA, laplace:SCALE, "
                             "nopeek:ALPHA, dpsgd:NOISE_MULTIPLIER, label_dp:EPSILON, topk:RATIO, maxnorm, none")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every demo shares: data, output, seed, device, verbosity, downloads."""
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="dataset root ($UNSPLIT_DATA)")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default: results/<run name>)")
    parser.add_argument("--overwrite", action="store_true", help="write into --out even if it holds results")
    parser.add_argument("--seed", type=int, default=0, help="seed for models, data order and attacks")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to compute")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-download", action="store_true", help="never try to download missing data")


def parse_with_defenses(parser: argparse.ArgumentParser, argv=None, *, num_classes: int = 10) -> argparse.Namespace:
    """``parser.parse_args`` that also validates ``--defense`` (``args.defense`` becomes the checked specs)."""
    args = parser.parse_args(argv)
    args.defense = check_defenses(parser, args.defense or [], num_classes=num_classes)
    return args


def log(args, message: str) -> None:
    """Prints a status line (stdout), unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(message, flush=True)


def run_main(main: Callable[[Optional[list]], int], argv: Optional[list] = None) -> int:
    """Runs a demo's ``main``, turning expected failures into one-line messages and exit code 2."""
    try:
        return main(argv)
    except (UsageError, DataUnavailable, ValueError, FileExistsError) as exc:  # CheckpointMismatch is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def output_dir(args, default_name: str, *, checkpoint: Optional[str] = None) -> Path:
    """The results directory: ``--out`` (refused if it holds results, unless ``--overwrite``), or a fresh
    ``results/<default_name>[-k]`` that never clobbers an earlier run. For a resumable demo, ``checkpoint`` names its
    checkpoint file in the directory: a finished run's checkpoint is removed under ``--overwrite`` so the new run
    starts afresh (an unfinished one, without ``metrics.json``, is resumed)."""
    if args.out is None:
        return unique_dir(Path("results") / default_name)
    out = Path(args.out)
    finished = (out / "metrics.json").exists()
    if finished and not args.overwrite:
        raise FileExistsError(f"{out} already holds results (metrics.json); pass --overwrite or another --out")
    if finished and checkpoint and (out / checkpoint).exists():
        (out / checkpoint).unlink()
    return out


def device_of(args) -> torch.device:
    try:
        return resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def trained_model(
    args,
    device: torch.device,
    *,
    test: Tuple[torch.Tensor, torch.Tensor],
    split_depth: Optional[int] = None,
) -> Tuple[nn.Sequential, Dict[str, object]]:
    """The demos' split model: the :class:`~unsplit.experiments.TrainingCase` their options describe (dataset,
    ``--epochs``, ``--seed``, ``--defense`` at ``split_depth``), through :func:`~unsplit.experiments.train_or_load`
    (``--checkpoint PATH`` chooses the file, ``--retrain`` ignores an existing one; a checkpoint of another case is
    a usage error)."""
    specs = tuple(args.defense or ())  # checked by parse_with_defenses
    case = TrainingCase(args.dataset, epochs=args.epochs, seed=args.seed, defenses=specs,
                        split_depth=split_depth if specs else None)
    return train_or_load(case, data_dir=args.data_dir, checkpoint=args.checkpoint, retrain=args.retrain,
                         download=not args.no_download, test=test, device=device, progress=not args.quiet,
                         log=lambda message: log(args, message))


def train_mean_image(dataset: str, x_test: torch.Tensor, *, data_dir=None) -> torch.Tensor:
    """Per-pixel mean of the training images, ``(1, C, H, W)`` (a trivial reconstruction that knows the data
    distribution); the test split's mean if only the test split is on disk."""
    try:
        x_train, _ = load_dataset(dataset, data_dir=data_dir, train=True, download=False)
    except (DataUnavailable, OSError, RuntimeError):
        x_train = x_test
    return x_train.mean(dim=0, keepdim=True)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained-model cache file (default: checkpoints/<training case>.pt)")
    parser.add_argument("--retrain", action="store_true", help="train even if the checkpoint exists")
