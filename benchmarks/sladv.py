#!/usr/bin/env python
"""SLADV (Fan et al., ECAI'23): success rate against split point, shadow front, shadow-data source and size, and eps.

One victim (U-shaped split learning on the client's first ``--client-size`` CIFAR-10 training images; without a
defense one trained model serves every split point) is attacked one factor at a time around a base setting, the
first value of each list (by default split 1, ``single`` shadow, ``cifar-skewed`` attacker data, 1,024 images,
eps 8/255): each split point of ``--splits``, each shadow of ``--shadows``, each source of ``--sources``, each size
of ``--sizes``, each eps of ``--eps``. Every cell is one atomic JSON under ``OUT/cells`` (:mod:`unsplit.grid`: a
rerun skips finished cells, ``--executor ray`` runs them as Ray tasks, ``--seeds`` adds seeded victims); the
baselines (same-eps noise, white-box PGD on the whole model, PGD transferred from a surrogate trained on the attacker's
images with labels) are cells of their own, per eps (and per source and size for the surrogate). ``report.md`` and
``sladv.png`` are rebuilt from every stored cell, each row folding the seeds it has into mean ± std.

    python benchmarks/sladv.py --data-dir ../shared/data
    python benchmarks/sladv.py --data-dir ../shared/data --sizes 1024,128,256,512,2048 --eps 8,2,4,16
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from unsplit import metrics, sladv
from unsplit.cli import make_parser, run_main
from unsplit.data import default_data_dir, load_dataset
from unsplit.grid import (
    Cell,
    ResultStore,
    add_grid_arguments,
    fold_seeds,
    grid_options,
    pm,
    report_failures,
    run_grid,
)
from unsplit.training import evaluate
from unsplit.util import atomic_save_figure, atomic_write_text, resolve_device

FACTORS = ("split", "shadow", "objective", "source", "size", "eps")


def _ints(text: str):
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--model", choices=tuple(sladv.VICTIMS), default="cifarnet")
    p.add_argument("--epochs", type=int, default=3, help="victim's split-learning epochs")
    p.add_argument("--client-size", type=int, default=40_000)
    p.add_argument("--splits", default="1,2,3,4")
    p.add_argument("--shadows", default="single,multi")
    p.add_argument("--objectives", default="stealing,distribution",
                   help="stage 1: distribution (moments + MMD on the attacker's images), stealing (ours: UnSplit's "
                        "model stealing on the smashed data the server received), critic (ours: FSHA's WGAN-GP "
                        "critic on the smashed data) or paired (ours: the attacker's images run through the deployed "
                        "model as queries, regressed on the smashed data received for them)")
    p.add_argument("--cross", default="",
                   help="factors crossed in full (e.g. split,shadow,objective); the others vary one at a time")
    p.add_argument("--critic-smashed", type=int, default=2048,
                   help="critic: smashed tensors of the inference passes the critic sees as real")
    p.add_argument("--steal-iters", type=int, default=200, help="stealing: outer iterations (x 20 + 20 steps)")
    p.add_argument("--steal-counts", default="64",
                   help="stealing: smashed tensors used (a list: the first is the base, the others a curve at it)")
    p.add_argument("--sources", default="cifar-skewed,cifar-iid")
    p.add_argument("--sizes", default="1024,256", help="attacker images (unlabeled)")
    p.add_argument("--eps", default="8,4", help="L-inf budgets in 1/255 units")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (step 2/255)")
    p.add_argument("--loss", choices=("l2", "head"), default="l2",
                   help="stage 2: the middle output's L2 deviation, or (ours) its deviation along the leading "
                        "directions of the gradients the client's head returned in training (--head-rank)")
    p.add_argument("--head-rank", type=int, default=10, help="head loss: directions kept")
    p.add_argument("--observed-targets", choices=sladv.OBSERVED_TARGETS, default="none",
                   help="ours: the attacked images run through the deployed model once, their smashed data stage 2's "
                        "reference (anchor) and, for the paired objective, more query pairs (pairs)")
    p.add_argument("--shadow-steps", type=int, default=400)
    p.add_argument("--eval-count", type=int, default=1000, help="first N test images (scaffold: 1,000)")
    p.add_argument("--stats-samples", type=int, default=5000)
    p.add_argument("--baselines", default="noise,whitebox,transfer,oracle",
                   help="oracle: feature PGD through the client's real front (a diagnostic ceiling of stage 2, "
                        "not an attack)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sladv"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    try:
        args.split_list, args.size_list, args.eps_list = _ints(args.splits), _ints(args.sizes), _ints(args.eps)
        args.steal_count_list = _ints(args.steal_counts)
    except ValueError:
        p.error("--splits, --sizes, --eps and --steal-counts take comma-separated integers")
    args.shadow_list = [s.strip() for s in args.shadows.split(",") if s.strip()]
    args.objective_list = [s.strip() for s in args.objectives.split(",") if s.strip()]
    if not args.objective_list or not set(args.objective_list) <= set(sladv.SHADOW_OBJECTIVES):
        p.error(f"--objectives among {','.join(sladv.SHADOW_OBJECTIVES)}")
    args.source_list = [s.strip() for s in args.sources.split(",") if s.strip()]
    args.baseline_list = [s.strip() for s in args.baselines.split(",") if s.strip()]
    if not set(args.split_list) <= {1, 2, 3, 4}:
        p.error("--splits must be among 1,2,3,4")
    if not set(args.shadow_list) <= set(sladv.SHADOW_KINDS) or not set(args.source_list) <= {"cifar-skewed",
                                                                                             "cifar-iid"}:
        p.error(f"--shadows among {','.join(sladv.SHADOW_KINDS)}; --sources among cifar-skewed,cifar-iid")
    args.cross_list = [s.strip() for s in args.cross.split(",") if s.strip()]
    if not set(args.cross_list) <= set(FACTORS):
        p.error(f"--cross among {','.join(FACTORS)}")
    if not set(args.baseline_list) <= {"noise", "whitebox", "transfer", "oracle"}:
        p.error("--baselines among noise,whitebox,transfer,oracle")
    if not all((args.split_list, args.shadow_list, args.source_list, args.size_list, args.eps_list)):
        p.error("--splits, --shadows, --sources, --sizes and --eps each need a value")
    if not args.steal_count_list or min(args.steal_count_list) < 1:
        p.error("--steal-counts needs integers >= 1")
    if min(args.size_list + args.eps_list + [args.epochs, args.eval_count, args.shadow_steps, args.head_rank]) < 1:
        p.error("--sizes, --eps, --epochs, --eval-count, --shadow-steps and --head-rank must be >= 1")
    if args.observed_targets == "pairs" and set(args.objective_list) != {"paired"}:
        p.error("--observed-targets pairs adds query pairs: it needs --objectives paired")
    return args


def _lists(args) -> dict:
    return dict(zip(FACTORS, (args.split_list, args.shadow_list, args.objective_list, args.source_list,
                              args.size_list, args.eps_list)))


def base(args) -> dict:
    """The base setting: the first value of each list."""
    return {k: v[0] for k, v in _lists(args).items()}


def settings(args) -> list:
    """The ``--cross`` factors in full, each combination the centre of a one-factor-at-a-time grid over the others
    (no ``--cross``: one grid around :func:`base`), without repeats."""
    lists, cells = _lists(args), []
    for combo in itertools.product(*(lists[k] for k in args.cross_list)):
        centre = {**base(args), **dict(zip(args.cross_list, combo))}
        for key, values in lists.items():
            for v in values:
                cell = {**centre, key: v}
                if cell not in cells:
                    cells.append(cell)
    if base(args)["objective"] == "stealing":  # how many smashed tensors the stealing needs, at the base setting
        cells += [{**base(args), "steal_count": n} for n in args.steal_count_list[1:]]
    return cells


def _steal_count(c: dict, args) -> int:
    return c.get("steal_count", args.steal_count_list[0])


def _tag(args, seed: int) -> str:
    return f"{args.model}_e{args.epochs}_n{args.client_size}_st{args.steps}_ss{args.shadow_steps}_s{seed}"


def _objective_tag(args, c: dict) -> str:
    if c["objective"] == "stealing":
        return f"steal{_steal_count(c, args)}x{args.steal_iters}"
    return {"distribution": "dist", "critic": f"critic{args.critic_smashed}", "paired": "paired"}[c["objective"]]


def cell_name(args, c: dict, seed: int) -> str:
    objective = _objective_tag(args, c) + (f"_head{args.head_rank}" if args.loss == "head" else "")
    objective += f"_obs{args.observed_targets}" if args.observed_targets != "none" else ""
    return f"{_tag(args, seed)}_sp{c['split']}_{c['shadow']}_{objective}_{c['source']}_{c['size']}_eps{c['eps']}"


def grid_cells(args) -> list:
    """Per seed: the one-factor-at-a-time SLADV cells, then the baselines per eps (transfer per attacker set)."""
    cells = []
    for seed in args.seeds:
        victim = {"model": args.model, "epochs": args.epochs, "client_size": args.client_size, "steps": args.steps,
                  "shadow_steps": args.shadow_steps, "eval_count": args.eval_count,
                  "stats_samples": args.stats_samples, "seed": seed}
        tag, group = _tag(args, seed), f"victim-s{seed}"
        for c in settings(args):
            steal = ({"steal_count": _steal_count(c, args), "steal_iters": args.steal_iters}
                     if c["objective"] == "stealing" else
                     {"critic_smashed": args.critic_smashed} if c["objective"] == "critic" else {})
            factors = {k: c[k] for k in FACTORS}
            stage2 = {"loss": "head", "head_rank": args.head_rank} if args.loss == "head" else {}
            if args.observed_targets != "none":
                stage2["observed_targets"] = args.observed_targets
            cells.append(Cell(f"cells/{cell_name(args, c, seed)}",
                              {**victim, "kind": "sladv", **factors, **steal, **stage2}, group=group))
        for eps in sorted({c["eps"] for c in settings(args)}):
            for kind in ("noise", "whitebox"):
                if kind in args.baseline_list:
                    cells.append(Cell(f"cells/{tag}_{kind}_eps{eps}", {**victim, "kind": kind, "eps": eps},
                                      group=group))
            if "transfer" in args.baseline_list:
                for source, size in sorted({(c["source"], c["size"]) for c in settings(args)}):
                    config = {**victim, "kind": "transfer", "eps": eps, "source": source, "size": size}
                    cells.append(Cell(f"cells/{tag}_transfer_{source}_{size}_eps{eps}", config, group=group))
        if "oracle" in args.baseline_list:  # at the base eps, per split point
            for split in args.split_list:
                config = {**victim, "kind": "oracle", "eps": base(args)["eps"], "split": split}
                cells.append(Cell(f"cells/{tag}_oracle_sp{split}_eps{config['eps']}", config, group=group))
    return cells


_STATE: dict = {}  # per process: data, the victim, server statistics per split, surrogates per attacker set


def _victim(c: dict, *, data_dir, device, progress: bool):
    key = ("victim", c["model"], c["epochs"], c["client_size"], c["seed"])
    if key not in _STATE:
        _STATE.clear()
        x_train, y_train = load_dataset("cifar", data_dir=data_dir, train=True, download=False)
        x_test, y_test = load_dataset("cifar", data_dir=data_dir, train=False, download=False)
        x_client, y_client = x_train[: c["client_size"]], y_train[: c["client_size"]]
        model, _ = sladv.train_or_load_victim(c["model"], x_client, y_client, epochs=c["epochs"], device=device,
                                              seed=c["seed"], progress=progress, log=print if progress else None)
        whole = sladv.victim_topology(model, 1).as_model().eval()
        accuracy = evaluate(whole, x_test, y_test, device=device)
        _STATE[key] = (x_train, y_train, x_test, y_test, model, whole, accuracy)
    return _STATE[key]


def _statistics(c: dict, topology, x_train, idx, *, device) -> "sladv.ServerStatistics":
    """What the server recorded at inference (cached per process): for ``paired``, the passes of the attacker's own
    images (its queries, in order); otherwise the client's passes over its first ``stats_samples`` images."""
    keep = sladv.smashed_kept(c["objective"], **{k: c[k] for k in ("steal_count", "critic_smashed") if k in c})
    paired = c["objective"] == "paired"
    key = ("pairs", c["split"], c["source"], c["size"]) if paired else ("stats", c["split"], keep)
    if key not in _STATE:
        _STATE[key] = sladv.record_inference(topology, c["objective"], x_train[idx], x_train[: c["stats_samples"]],
                                             keep=keep, device=device)
    return _STATE[key]


def _head_gradients(c: dict, topology, x_train, y_train, config, *, device) -> "sladv.HeadGradients":
    """What the server saw the client's head return at the end of training (cached per process and split point)."""
    n = c["stats_samples"]
    key = ("gradients", c["split"], n, config.max_gradients)
    if key not in _STATE:
        _STATE[key] = sladv.record_head_gradients(topology, x_train[:n], y_train[:n], keep=config.max_gradients,
                                                  device=device, seed=c["seed"])
    return _STATE[key]


def run_cell(c: dict, *, data_dir, device, progress: bool) -> dict:
    """One SLADV setting or one baseline against the (cached) victim."""
    device = resolve_device(device)
    x_train, y_train, x_test, y_test, model, whole, accuracy = _victim(c, data_dir=data_dir, device=device,
                                                                       progress=progress)
    seed, n = c["seed"], c["eval_count"]
    x_eval, y_eval = x_test[:n], y_test[:n]
    common = {"model": c["model"], "epochs": c["epochs"], "client_size": c["client_size"], "steps": c["steps"],
              "seed": seed, "victim_test_accuracy": accuracy, "eval_count": len(x_eval)}
    start = time.perf_counter()
    if c["kind"] == "sladv":
        topology = sladv.victim_topology(model, c["split"])
        # the client front's architecture only (a fresh, untrained network): what shadow "known" may use
        architecture = (sladv.victim_topology(sladv.build_victim(c["model"]), c["split"]).front
                        if c["shadow"] == "known" else None)
        _, idx, seen = sladv.attacker_split(y_train, source=c["source"], size=c["size"],
                                            client_size=c["client_size"], seed=seed)
        stats = _statistics(c, topology, x_train, idx, device=device)
        loss = c.get("loss", "l2")
        config = sladv.SLADVConfig(shadow=c["shadow"], objective=c["objective"], shadow_steps=c["shadow_steps"],
                                   steal_count=c.get("steal_count", 64), steal_iters=c.get("steal_iters", 200),
                                   eps=c["eps"] / 255, alpha=2 / 255, steps=c["steps"], progress=progress,
                                   phase="inference", loss=loss, head_rank=c.get("head_rank", 10),
                                   observed_targets=c.get("observed_targets", "none"))
        gradients = _head_gradients(c, topology, x_train, y_train, config, device=device) if loss == "head" else None
        observed = None  # the targets' own inference passes, recorded as the server's queries are
        if config.observed_targets != "none":
            observed = sladv.record_targets(topology, x_eval, device=device)
        attack = sladv.SLADV(topology.middle, x_train[idx], config, targets=x_eval, front_architecture=architecture,
                             statistics=stats, gradients=gradients, target_smashed=observed, device=device, seed=seed)
        x_adv = attack.result().examples
        m, fit = metrics.adversarial_metrics(whole, x_eval, x_adv, y_eval, device=device), attack.shadow_fit
        keys = {k: c[k] for k in FACTORS}
        if loss == "head":
            keys.update(loss="head", head_rank=config.head_rank, head_directions=attack.head_directions)
        if c["objective"] == "stealing":
            keys["steal_count"] = c.get("steal_count", 64)
        if observed is not None:
            keys["observed_targets"] = config.observed_targets
        return {**common, **keys, "kind": "sladv", "shadow_classes": seen, **m, "shadow_fit": fit,
                "seconds": time.perf_counter() - start}
    pgd = dict(eps=c["eps"] / 255, alpha=2 / 255, steps=c["steps"], device=device, seed=seed)
    extra = {}
    if c["kind"] == "noise":
        x_adv = sladv.random_sign_noise(x_eval, eps=c["eps"] / 255, seed=seed)
    elif c["kind"] == "whitebox":
        x_adv = sladv.pgd(whole, x_eval, y_eval, **pgd)
    elif c["kind"] == "oracle":  # metric code: the client's real front in the shadow's place
        topology = sladv.victim_topology(model, c["split"])
        x_adv = sladv.feature_pgd(topology.front, topology.middle, x_eval, eps=c["eps"] / 255, alpha=2 / 255,
                                  steps=c["steps"], device=device, seed=seed)
        extra = {"split": c["split"]}
    else:  # transfer: one surrogate per attacker set (per process), attacked at every eps
        key = ("surrogate", c["source"], c["size"])
        if key not in _STATE:
            _, idx, _ = sladv.attacker_split(y_train, source=c["source"], size=c["size"],
                                             client_size=c["client_size"], seed=seed)
            _STATE[key] = sladv.train_surrogate(sladv.build_victim(c["model"]), x_train[idx], y_train[idx],
                                                device=device, seed=seed)
        x_adv = sladv.pgd(_STATE[key], x_eval, y_eval, **pgd)
        extra = {"source": c["source"], "size": c["size"]}
    return {**common, "kind": c["kind"], "eps": c["eps"], **extra,
            **metrics.adversarial_metrics(whole, x_eval, x_adv, y_eval, device=device)}


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = None
    if not args.report_only:
        cells = grid_cells(args)
        store = ResultStore(args.out)
        if args.executor == "ray" and any(args.recompute or store.status(c) != "ok" for c in cells):
            for seed in args.seeds:  # the victim is trained once, here, not by parallel cells
                _victim({"model": args.model, "epochs": args.epochs, "client_size": args.client_size, "seed": seed},
                        data_dir=args.data_dir, device=resolve_device(args.device), progress=not args.quiet)
        runtime = {"data_dir": args.data_dir, "device": args.device, "progress": not args.quiet}
        summary = run_grid(cells, run_cell, store=store, runtime=runtime, **grid_options(args))
    print(build_report(args))
    return report_failures(summary)


def build_report(args) -> Path:
    """``report.md``: a section per victim model with stored cells (``--model``'s even if it has none), each with its
    plot (``sladv.png`` for the CifarNet, ``sladv-<model>.png`` for another)."""
    sections = []
    for model in sladv.VICTIMS:  # every model stored, whatever --model this run attacked
        margs = argparse.Namespace(**{**vars(args), "model": model})
        records = ResultStore(args.out).records(f"cells/{_tag(margs, '*')}_*.json")  # every seed, not only --seeds
        if records or model == args.model:
            plot = "sladv.png" if model == "cifarnet" else f"sladv-{model}.png"
            sections.append(_section(margs, records, args.out / plot))
    args.out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(args.out / "report.md", "\n\n".join(sections) + "\n")


def _section(args, records, plot) -> str:
    """One victim model's table (and its plot) from its stored cells."""
    for r in records:  # cells stored before the count was a factor keep it in their config only
        if r.get("objective") == "stealing":
            r.setdefault("steal_count", r["_cell"]["config"].get("steal_count", 64))
        fit = r.get("shadow_fit") or {}  # how close the shadow came, in the objective's own terms
        r["fit"] = next((fit[k] for k in ("relative_mse", "smashed_mse", "moment_loss") if k in fit), None)
        r.setdefault("loss", "l2")
        r.setdefault("head_rank", None)
        r.setdefault("observed_targets", "none")
    by = ["kind", *FACTORS, "steal_count", "loss", "head_rank", "observed_targets"]
    cells = fold_seeds(records, by=by)
    attacks = [c for c in cells if c["kind"] == "sladv"]
    baselines = {(c["kind"], c["eps"], c.get("source"), c.get("size")): c for c in cells
                 if c["kind"] not in ("sladv", "oracle")}
    lines = [f"### {args.model}", "",
             f"SLADV (Fan et al., ECAI'23) victim: {args.model}, {args.epochs} epochs on {args.client_size} "
             "CIFAR-10 images"
             + (f" (test accuracy {pm(cells[0], 'victim_test_accuracy')})" if cells else "")
             + f"; {args.steps} PGD steps of 2/255; the first {args.eval_count} test images. Success = the fraction of "
             "correctly classified clean images whose adversarial version is misclassified; a row over several "
             "seeded victims (column seeds) shows their mean ± std, and each baseline over those of its seeds that "
             "have it. Real-front ceiling: the same feature PGD through the client's own front (a diagnostic, not an "
             "attack: how much stage 1 loses). Stage-1 fit: paired, the shadow's error on its query pairs over the "
             "smashed data's variance; stealing, the MSE to the stolen smashed tensors; critic and distribution, the "
             "standardised moment distance to the recorded smashed data.", "",
             "| split | shadow | stage 1 | attacker data | size | eps | accuracy | misclassified | success | "
             "noise success | white-box success | transfer success | real-front ceiling | stage-1 fit | s | seeds |",
             "|" + "---|" * 16]

    def stage1(c):
        used = c.get("head_directions") or f"up to {c.get('head_rank')}"
        head = f"; head-gradient PGD ({used} directions)" if c.get("loss") == "head" else ""
        head += f"; targets observed ({c['observed_targets']})" if c["observed_targets"] != "none" else ""
        if c["objective"] == "critic":
            return f"critic ({c['_cell']['config'].get('critic_smashed')} smashed){head}"
        return (c["objective"] if c["objective"] != "stealing" else
                f"stealing ({c.get('steal_count', 64)} smashed)") + head

    def beside(c, seeds, kind, *keys):
        """The baseline ``kind`` over ``seeds`` (those of ``c``, matched on ``keys``), folded as ``c`` is."""
        same = [r for r in records if r["kind"] == kind and r["seed"] in seeds and all(r[k] == c[k] for k in keys)]
        return pm(fold_seeds(same, by=["kind"])[0], "success_rate") if same else ""

    def order(c):
        return tuple(c[k] for k in FACTORS) + (c.get("steal_count") or 0, c["loss"] != "l2",
                                               sladv.OBSERVED_TARGETS.index(c["observed_targets"]))

    lines[4:4] = _victims(records)
    for c in sorted(attacks, key=order):
        seeds = {r["seed"] for r in records if all(r.get(k) == c.get(k) for k in by)}
        lines.append(f"| {c['split']} | {c['shadow']} | {stage1(c)} | {c['source']} | {c['size']} | "
                     f"{c['eps']}/255 | "
                     f"{pm(c, 'accuracy')} | {pm(c, 'misclassification_rate')} | {pm(c, 'success_rate')} | "
                     f"{beside(c, seeds, 'noise', 'eps')} | {beside(c, seeds, 'whitebox', 'eps')} | "
                     f"{beside(c, seeds, 'transfer', 'eps', 'source', 'size')} | "
                     f"{beside(c, seeds, 'oracle', 'split', 'eps')} | "
                     f"{pm(c, 'fit')} | "
                     f"{c['seconds']:.0f} | {c['n_seeds']} |")
    ceiling = sorted((c["split"], c["success_rate"]) for c in cells
                     if c["kind"] == "oracle" and c["eps"] == base(args)["eps"])
    _plot(attacks, baselines, base(args), plot, ceiling=ceiling)
    return "\n".join(lines)


def _victims(records) -> list:
    """A note where one seed's cells attacked more than one training of its victim (a victim retrained where its
    checkpoint was missing is the same model only on the same kind of CPU: the kernels' float order differs)."""
    trainings: dict = {}  # seed -> {test accuracy (a training's identity): its CPU}
    for r in records:
        trainings.setdefault(r["seed"], {}).setdefault(round(r["victim_test_accuracy"], 4), r["_cell"].get("cpu", "?"))
    mixed = [f"seed {seed}: " + ", ".join(f"{acc:.4f} ({cpu})" for acc, cpu in sorted(found.items(), reverse=True))
             for seed, found in sorted(trainings.items()) if len(found) > 1]
    if not mixed:
        return []
    return ["Victims trained more than once (test accuracy and CPU of each training; a row folds the cells of its "
            "seeds whichever training they attacked): " + "; ".join(mixed) + ".", ""]


VARIED = ("split", "size", "eps", "steal_count")  # the plot's panels: success against each, where it was varied
SETTING = (*FACTORS, "steal_count", "loss", "head_rank", "observed_targets")


def curves(attacks, key) -> dict:
    """The attack rows that differ in ``key`` alone, as curves: ``{settings: rows sorted by key}`` for every setting
    of the other factors measured at two or more values of ``key`` (at one or more for the split point)."""
    rest = [k for k in SETTING if k != key]
    groups: dict = {}
    for c in attacks:
        if c.get(key) is not None:
            groups.setdefault(tuple((k, c.get(k)) for k in rest), []).append(c)
    least = 1 if key == "split" else 2  # the split panel shows every stage 1 measured, even at one split point
    return {g: sorted(rows, key=lambda c: c[key]) for g, rows in groups.items() if len({c[key] for c in rows}) >= least}


def _label(settings, shown) -> str:
    s = dict(settings)
    count = s.get("steal_count")  # absent in the panel of the count itself
    stage1 = f"stealing ({count} smashed)" if s["objective"] == "stealing" and count else s["objective"]
    text = ", ".join([s["shadow"], stage1] + [f"{k} {s[k]}" for k in shown if k != "steal_count"])
    observed = f", targets observed ({s['observed_targets']})" if s["observed_targets"] != "none" else ""
    return text + (", head PGD" if s["loss"] == "head" else "") + observed


def _baseline(ax, kind, style, baselines, eps, *, against_eps: bool) -> None:
    """A baseline's success: against eps in the eps panel, a level line at the base ``eps`` in the others."""
    if against_eps:
        points = sorted((e, c["success_rate"]) for (k, e, _, _), c in baselines.items() if k == kind)
        if points:
            ax.plot(*zip(*points), ls=style, color="k", marker=".", label=kind)
    elif (kind, eps, None, None) in baselines:
        ax.axhline(baselines[(kind, eps, None, None)]["success_rate"], ls=style, color="k", label=f"{kind} (eps {eps})")


def _plot(attacks, baselines, centre, path, *, ceiling=()) -> None:
    """Success (mean ± std over seeds) against each factor varied, one curve per setting of the others, beside
    same-eps noise and white-box PGD at the base eps, and, against the split point, the real-front ceiling
    (``ceiling``: ``(split, success)`` pairs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"split": "split point", "size": "attacker images", "eps": "eps (/255)",
             "steal_count": "smashed tensors stolen from"}
    panels = [(key, curves(attacks, key)) for key in VARIED]
    panels = [(key, found) for key, found in panels if found] or [("split", {})]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 5.2), squeeze=False)
    for ax, (key, found) in zip(axes[0], panels):
        # the label names, beyond shadow and stage 1, the factors that tell this panel's curves apart
        shown = [k for k in SETTING if k not in (key, "shadow", "objective", "loss", "head_rank", "observed_targets")
                 and len({dict(g)[k] for g in found} - {None}) > 1]
        for i, (settings, rows) in enumerate(sorted(found.items(), key=lambda item: str(item[0]))):
            ax.errorbar([c[key] for c in rows], [c["success_rate"] for c in rows],
                        yerr=[c.get("std", {}).get("success_rate", 0.0) for c in rows], capsize=3,
                        marker="os^Dv<>p"[i % 8], ls="--" if dict(settings)["loss"] == "head" else "-",
                        label=_label(settings, shown))
            if len({c["n_seeds"] for c in rows}) > 1:  # a curve joining means over different numbers of victims
                for c in rows:
                    ax.annotate(f"{c['n_seeds']} seed{'s' * (c['n_seeds'] > 1)}", (c[key], c["success_rate"]),
                                textcoords="offset points", xytext=(0, -12), ha="center", fontsize=6)
        for kind, style in (("whitebox", "--"), ("noise", ":")):
            _baseline(ax, kind, style, baselines, centre["eps"], against_eps=key == "eps")
        if key == "split" and ceiling:
            ax.plot(*zip(*ceiling), ls="-.", color="grey", marker=".", label="real-front ceiling (not an attack)")
        if key in ("size", "steal_count"):
            ax.set_xscale("log")
            ax.minorticks_off()
        measured = sorted({c[key] for rows in found.values() for c in rows})
        ax.set_xticks(measured, [str(v) for v in measured])  # the values measured, written out
        ax.set(xlabel=names[key], ylabel="success rate", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(run_main(main))
