"""SDAR (Zhu et al., NDSS'25): the official networks at every level, effectiveness on a small generated problem, the
attacker's view (labels only where the server owns them, no client weights), resumable state, config checks."""
import json

import pytest
import torch
from torch import nn

from unsplit import Topology, train_split
from unsplit.defenses import GaussianNoise
from unsplit.models import CifarResNet20, build_model
from unsplit.sdar import SDAR, SDARConfig, SDARNetworks, decoder, official_log
from unsplit.training import run_split
from unsplit.util import to_channels_last

pytestmark = pytest.mark.usefixtures("one_thread")  # networks this small run fastest on one thread


def _images(n: int, seed: int):
    """16x16 images of 4 classes: a coloured square whose colour and corner follow the class, on a noisy ground."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 + 0.1 * torch.rand(n, 3, 16, 16, generator=g)
    colours = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        off = torch.randint(0, 3, (2,), generator=g)
        top, left = 2 + 7 * r + int(off[0]), 2 + 7 * c + int(off[1])
        x[i, :, top:top + 5, left:left + 5] = colours[y[i]].view(3, 1, 1)
    return x, y


def _victim(seed: int = 0) -> Topology:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU()), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 4))
    return Topology.split(model, front_depth=0)


def _small_networks(topology: Topology, config: SDARConfig, *, conditional: bool, seed: int = 0) -> SDARNetworks:
    """The official decoder (layout from the shape) and small discriminators: the official ones are sized for
    CIFAR-scale maps and would make the test slow."""
    torch.manual_seed(seed)
    from unsplit.models import fresh_copy
    from unsplit.sdar import Conditioned, LabelMap

    def dis(channels, size):
        body = nn.Sequential(nn.Conv2d(channels + conditional, 16, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
                             nn.Dropout(0.4), nn.Linear(16 * (size // 2) ** 2, 1))
        return Conditioned(body, LabelMap(4, (size, size), 8) if conditional else None)

    return SDARNetworks(fresh_copy(topology.front, seed=seed),
                        decoder((8, 8, 8), image_shape=(3, 16, 16), num_classes=4, conditional=conditional,
                                embed_dim=8),
                        dis(8, 8) if config.lambda1 > 0 else None, dis(3, 16) if config.lambda2 > 0 else None)


@pytest.mark.parametrize("level", [4, 5, 6, 7])
@pytest.mark.parametrize("name", ["resnet20", "plainnet20"])
def test_the_official_networks_fit_every_level(name, level):
    model = build_model(name)
    topology = Topology.split(model, front_depth=CifarResNet20.front_depth(level))
    nets = SDARNetworks.official(topology.front, SDARConfig(), level=level)
    z = topology.front(torch.rand(2, 3, 32, 32))
    assert tuple(z.shape[1:]) == ((32, 16, 16) if level < 7 else (64, 8, 8))
    y = torch.tensor([1, 2])
    with torch.no_grad():
        images = nets.decoder.eval()(z, y)
    assert images.shape == (2, 3, 32, 32) and 0 <= float(images.min()) <= float(images.max()) <= 1
    assert nets.simulator_dis.eval()(z, y).shape == (2, 1) and nets.decoder_dis.eval()(images, y).shape == (2, 1)
    assert set(nets.simulator.state_dict()) == set(topology.front.state_dict())


#: the official settings but for a discriminator that learns (and weighs) more on a problem this small
TOY = SDARConfig(batch_size=32, lambda1=0.5, e_dis_lr=2e-4, d_lr=2e-3)


def _attack(topology, config=None, *, front=None, seed=0, precision="fp32"):
    config = config or TOY
    x_aux, y_aux = _images(600, 1)
    conditional = config.conditional if config.conditional is not None else True
    nets = _small_networks(topology if front is None else Topology(front, topology.middle), config,
                           conditional=conditional, seed=seed)
    return SDAR(front or topology.front, topology.middle, x_aux, y_aux, config, num_classes=4, networks=nets, seed=seed,
                precision=precision)


def test_sdar_reconstructs_far_better_than_the_mean_image_the_class_means_and_its_naive_ablation():
    x, y = _images(600, 0)
    x_aux, y_aux = _images(600, 1)
    scores = {}
    for name, config in (("sdar", TOY), ("naive", SDARConfig.naive(batch_size=32, d_lr=2e-3))):
        topology = _victim()
        attack = _attack(topology, config)
        train_split(topology, x, y, epochs=18, batch_size=32, seed=0, callbacks=[attack])
        run_split(topology, x[:200], callbacks=[attack])  # the client sends 200 private images after training
        got = attack.result()
        assert torch.equal(got.indices, torch.arange(200)) and attack.steps == 18 * 19
        scores[name] = got.score(x[:200], reference=x_aux)  # baseline: the auxiliary images' mean image
    class_means = torch.stack([x_aux[y_aux == k].mean(0) for k in range(4)])
    labels_alone = float(((class_means[y[:200]] - x[:200]) ** 2).mean())  # what the labels alone give
    sdar, naive = scores["sdar"]["mse"], scores["naive"]["mse"]
    assert sdar < 0.4 * scores["sdar"]["baseline_mse"] and sdar < labels_alone, (scores, labels_alone)
    assert sdar < 0.5 * naive, scores  # the adversarial regularisation is what works (the paper's ablation)


def test_sdar_in_bfloat16_reconstructs_as_well():
    x, y = _images(600, 0)
    x_aux, _ = _images(600, 1)
    topology = _victim()
    attack = _attack(topology, precision="bf16")  # the attacker's networks under autocast; the victim in float32
    train_split(topology, x, y, epochs=18, batch_size=32, seed=0, callbacks=[attack])
    run_split(topology, x[:200], callbacks=[attack])
    got = attack.result()
    assert got.images.dtype == torch.float32 and attack.settings()["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for m in attack.nets.modules() for p in m.parameters())
    score = got.score(x[:200], reference=x_aux)
    assert score["mse"] < 0.4 * score["baseline_mse"], score  # as the float32 attack in the test above
    with pytest.raises(ValueError, match="precision"):
        SDAR(topology.front, topology.middle, x_aux, y, precision="fp16")


def test_sdar_reads_neither_the_clients_weights_nor_anything_it_does_not_declare():
    x, y = _images(96, 0)
    x_aux, y_aux = _images(96, 1)
    runs = []
    for poison in (False, True):
        topology = _victim()
        front = topology.front
        if poison:  # the architecture the attacker is given carries NaN weights: it must use only the structure
            front = _victim().front
            with torch.no_grad():
                for p in front.parameters():
                    p.fill_(float("nan"))
        attack = SDAR(front, topology.middle, x_aux, y_aux, SDARConfig(batch_size=32), num_classes=4)  # official nets
        assert attack.observes == {"front.smashed", "front.labels"}
        train_split(topology, x, y, epochs=1, batch_size=32, seed=0, callbacks=[attack])
        runs.append(attack.result())
    assert torch.isfinite(runs[0].images).all() and torch.equal(runs[0].images, runs[1].images)


def test_the_labels_reach_the_server_only_where_it_owns_them():
    from unsplit.protocol import SplitCallback

    class Seen(SplitCallback):
        observes = frozenset({"front.smashed", "front.labels"})

        def __init__(self):
            self.pairs = []

        def on_cut(self, event):
            self.pairs.append((event.phase, event.indices.clone(), event.labels))

    x, y = _images(64, 0)
    topology, seen = _victim(), Seen()
    train_split(topology, x, y, epochs=1, batch_size=16, seed=0, callbacks=[seen])
    run_split(topology, x[:16], callbacks=[seen])
    assert all(torch.equal(labels, y[idx]) for phase, idx, labels in seen.pairs if phase == "train")
    assert [labels for phase, _, labels in seen.pairs if phase == "inference"] == [None]
    u_shaped = Topology(_victim().front, nn.Identity(), nn.Identity())
    assert "front.labels" not in u_shaped.observable()
    with pytest.raises(ValueError, match="keeps its labels"):
        u_shaped.check_observes({"front.smashed", "front.labels"})


def test_a_checkpointed_run_resumes_the_attack_exactly(tmp_path):
    x, y = _images(200, 0)
    runs = []
    for split in (False, True):
        topology, path = _victim(), tmp_path / f"run{split}.pt"
        attack = _attack(topology)
        if split:
            train_split(topology, x, y, epochs=2, batch_size=32, seed=0, max_steps=5, checkpoint=path,
                        checkpoint_every=5, callbacks=[attack])
            topology = _victim()
            attack = _attack(topology)
        train_split(topology, x, y, epochs=2, batch_size=32, seed=0, max_steps=10, checkpoint=path,
                    checkpoint_every=5, callbacks=[attack])
        runs.append(attack)
    assert runs[0].history == runs[1].history and runs[1].steps == 10
    assert torch.equal(runs[0].result().images, runs[1].result().images)


def test_u_shaped_sdar_infers_labels_and_flips_its_auxiliary_labels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 4))
    topology = Topology.split(model, front_depth=1, head_start=5)
    x, y = _images(600, 0)
    config = SDARConfig(batch_size=32, conditional=False, flip_rate=0.2, lambda2=0.0)
    nets = _small_networks(Topology(topology.front, topology.middle), config, conditional=False)
    nets.head = nn.Linear(16 * 4 * 4, 4)
    attack = SDAR(topology.front, topology.middle, *_images(600, 1), config, head=topology.head, num_classes=4,
                  networks=nets)
    assert attack.observes == {"front.smashed"}
    train_split(topology, x, y, epochs=6, batch_size=32, seed=0, callbacks=[attack])
    run_split(topology, x[:200], callbacks=[attack])
    assert attack.labels().score(y[:200])["accuracy"] > 0.8
    flipped = attack._flip(torch.zeros(10000, dtype=torch.long))
    assert abs(float((flipped != 0).float().mean()) - 0.2 * 3 / 4) < 0.02


@pytest.mark.parametrize("bad, match", [
    (dict(lambda1=-1.0), "lambda1"), (dict(flip_rate=1.5), "flip_rate"), (dict(e_lr=0.0), "e_lr"),
    (dict(batch_size=0), "batch_size")])
def test_a_bad_config_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        SDARConfig(**bad)


def test_the_ablations_and_the_settings_the_split_allows():
    naive = SDARConfig.naive()
    assert (naive.lambda1, naive.lambda2, naive.flip_rate, naive.conditional) == (0.0, 0.0, 0.0, False)
    assert SDARConfig().ablation("no_e_dis").lambda1 == 0 and SDARConfig().simulator_dis_lr == pytest.approx(2e-5)
    assert SDARConfig().decoder_dis_lr == pytest.approx(5e-9)
    assert SDARConfig.u_shaped("plainnet20").lambda1 == 0.04
    with pytest.raises(ValueError, match="ablation"):
        SDARConfig().ablation("no_everything")
    topology = _victim()
    x_aux, y_aux = _images(40, 1)
    with pytest.raises(ValueError, match="flip_rate"):
        SDAR(topology.front, topology.middle, x_aux, y_aux, SDARConfig(flip_rate=0.2), num_classes=4)
    with pytest.raises(ValueError, match="keeps its labels"):
        SDAR(topology.front, topology.middle, x_aux, y_aux, SDARConfig(conditional=True), head=nn.Linear(256, 4),
             num_classes=4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        SDAR(topology.front, topology.middle, x_aux, y_aux + 4, num_classes=4)
    with pytest.raises(RuntimeError, match="observed nothing"):
        _attack(topology).result()
    with pytest.raises(ValueError, match="together with networks.head"):
        SDAR(topology.front, topology.middle, x_aux, y_aux, TOY, head=nn.Linear(256, 4), num_classes=4,
             networks=_small_networks(topology, TOY, conditional=False))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SDAR(topology.front, topology.middle, x_aux * 2, y_aux, num_classes=4)
    with pytest.raises(ValueError, match="does not fit"):
        decoder((32, 16, 16), level=7)  # level 7 smashes to 8x8
    from unsplit.sdar import SDARRunConfig

    assert SDARRunConfig(level=8).steps == 40_000 and SDARRunConfig().steps == 20_000  # the official lengths
    with pytest.raises(ValueError, match="level"):
        SDARRunConfig(level=9, u_shaped=True)


def test_the_demo_end_to_end_resumes_and_refuses_bad_input(tmp_path, capsys):
    from test_cli import run
    from test_sladv import _tiny_cifar_tree

    data = _tiny_cifar_tree(tmp_path / "data")  # 150 images: 75 private, 75 auxiliary
    common = ["cifar", "--data-dir", data, "--level", 4, "--batch-size", 16, "--eval-count", 8, "--quiet"]
    r = run("sdar_demo.py", *common, "--iters", 2, "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["attack"] == "sdar" and m["metrics"]["iterations"] == 2 and m["metrics"]["mse"] > 0
    assert m["baselines"]["mse"] > 0 and m["official_mean_curve"] is None  # batches of 16: not the official runs
    for png in ("reconstructions.png", "curve.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    again = run("sdar_demo.py", *common, "--iters", 2, "--out", tmp_path / "out", cwd=tmp_path)
    assert again.returncode == 2 and "already holds results" in again.stderr
    (tmp_path / "out" / "metrics.json").unlink()  # an interrupted run resumes from its checkpoint
    longer = run("sdar_demo.py", *common[:-1], "--iters", 3, "--out", tmp_path / "out", cwd=tmp_path)
    assert longer.returncode == 0 and "resuming" in longer.stdout, longer.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]["iterations"] == 3
    ran = m["config"]["precision"]  # --precision auto, resolved for this machine
    assert ran in ("fp32", "bf16")
    (tmp_path / "out" / "metrics.json").unlink()  # a resume in another precision is refused in one line
    other = run("sdar_demo.py", *common, "--iters", 4, "--out", tmp_path / "out", "--precision",
                "fp32" if ran == "bf16" else "bf16", cwd=tmp_path)
    assert other.returncode == 2 and "precision" in other.stderr and "Traceback" not in other.stderr, other.stderr
    from unsplit.demos import sdar as demo

    for bad in (["--level", 2], ["--iters", 0], ["--variant", "no_label_flip"], ["--batch-size", 1],
                ["--precision", "fp16"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse's exit, in process: one line, code 2
            demo.parse_args(["cifar", "--data-dir", str(data), *map(str, bad)])
        assert exit_info.value.code == 2, bad
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, (bad, err)


def test_the_benchmark_writes_a_cell_and_a_report_beside_the_official_logs(tmp_path):
    import importlib.util
    from pathlib import Path

    from test_sladv import _tiny_cifar_tree

    spec = importlib.util.spec_from_file_location("sdar_bench", Path(__file__).parents[1] / "benchmarks/sdar.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = _tiny_cifar_tree(tmp_path / "data")
    args = ["--data-dir", str(data), "--levels", "4", "--iters", "2", "--batch-size", "16", "--out",
            str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ck"), "--quiet"]
    assert bench.main(args) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "resnet20_l4_sdar_b16_s0" in report and "0.0797" in report  # the official five-run mean at 100
    assert (tmp_path / "out" / "curves.png").stat().st_size > 1000
    assert bench.main(args) == 0  # a rerun skips the stored cell
    (cell,) = (tmp_path / "out" / "cells").glob("*.json")
    stored = json.loads(cell.read_text())
    assert stored["task_curve"] == stored["decoder_curve"] == stored["simulator_dis_curve"] == {}  # no window yet
    # several seeds of one setting: their mean is a run of its own, at the iterations every seed logged
    runs = {f"r{s}": {"model": "resnet20", "level": 7, "variant": "sdar", "iterations": n, "curve": curve,
                      "mse": m, "psnr": 10.0 + s, "ssim": 0.5, "seconds_per_iteration": 1.0,
                      "baselines": {"mse": 0.06, "class_mean_mse": 0.05}}
            for s, n, curve, m in ((0, 300, {"99": 0.07, "199": 0.05, "299": 0.04}, 0.03),
                                   (1, 200, {"99": 0.09, "199": 0.07}, 0.05))}
    mean = bench._seed_means(runs)["resnet20_l7_sdar (mean of 2 seeds)"]
    assert mean["curve"] == pytest.approx({"99": 0.08, "199": 0.06}) and mean["iterations"] == 200
    assert mean["mse"] == pytest.approx(0.04) and mean["psnr"] == pytest.approx(10.5)
    assert bench._seed_means({"r0": runs["r0"]}) == {}
    assert "task_curve" not in mean  # the victim's curve: only where every seed recorded one
    runs["r0"]["task_curve"], runs["r1"]["task_curve"] = {"99": 1.8, "199": 1.4}, {"99": 2.0}
    mean = bench._seed_means(runs)["resnet20_l7_sdar (mean of 2 seeds)"]
    assert mean["task_curve"] == pytest.approx({"99": 1.9})
    official = sum(official_log("fg_loss", "resnet20", 7)[99]) / 5
    table = "\n".join(bench._side_tables({"m": mean}, (99, 199)))
    assert f"| m | 1.900 ({official:.3f}) | – (" in table and "`fg_loss`" in table and "`e_dis_loss`" not in table
    mean["decoder_curve"] = {"99": 0.05}
    official = sum(official_log("d_total_loss", "resnet20", 7)[99]) / 5
    assert f"| m | 0.0500 ({official:.4f}) |" in "\n".join(bench._side_tables({"m": mean}, (99,)))
    with pytest.raises(ValueError, match="metric must be one of"):
        official_log("accuracy")
    assert bench.running_means(list(range(250))) == {"99": 49.5, "199": 149.5}
    # agreement: ±20% of the mean, inside the runs' range, and the runs' own largest deviation from their mean
    ref = {99: [0.08, 0.10, 0.12], 199: [0.05, 0.05, 0.08]}
    row = bench._agreement({"99": 0.125, "199": 0.07, "299": 0.01}, ref)
    assert row == "1 of 2 | +25% at iteration 99 | 1 of 2 | +60% (run 3 at iteration 199)"  # 0.08 vs 0.05
    assert bench._agreement({"299": 0.01}, ref) == ""


def test_the_monitor_logs_the_official_attack_loss_and_run_sdar_runs_u_shaped():
    from unsplit.sdar import SDARMonitor, run_sdar

    x, y = _images(200, 0)
    topology = _victim()
    attack = _attack(topology)
    monitor = SDARMonitor(attack, x, window=2)
    train_split(topology, x[:128], y[:128], epochs=1, batch_size=32, seed=0, callbacks=[attack, monitor])
    errors = monitor.errors
    assert len(errors) == 4 and monitor.curve() == {"1": pytest.approx((errors[0] + errors[1]) / 2),
                                                    "3": pytest.approx((errors[2] + errors[3]) / 2)}
    latest = attack.latest()
    assert errors[-1] == pytest.approx(float(((latest.images - x[latest.indices]) ** 2).mean()))
    from unsplit.sdar import official_attack_loss

    runs = official_attack_loss("resnet20", 4)  # the official logs: five runs, every 100 iterations
    assert len(runs) == 200 and sum(runs[99]) / 5 == pytest.approx(0.0797, abs=1e-4)
    assert official_attack_loss("resnet20", 5) is None and official_attack_loss("resnet20", 7, "no_cond") is None
    from unsplit.sdar import OFFICIAL_METRICS, official_log

    for model, level, variant in (("resnet20", 7, "sdar"), ("plainnet20", 7, "sdar"), ("resnet20", 4, "sdar"),
                                  ("plainnet20", 4, "sdar"), ("resnet20", 7, "naive_sda")):
        for metric in OFFICIAL_METRICS:  # every logged quantity: five runs at each of the 200 logged iterations
            runs = official_log(metric, model=model, level=level, variant=variant)
            assert list(runs) == list(range(99, 20000, 100)) and {len(v) for v in runs.values()} == {5}
    # the attack's losses the benchmark stores beside the official decoder and discriminator losses
    assert len(attack.history["decoder_mse"]) == len(attack.history["simulator_dis_loss"]) == 4
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.rand(96, 3, 32, 32, generator=g), torch.arange(96) % 10
    report = run_sdar(xs[:48], ys[:48], xs[48:], ys[48:], model="resnet20", level=4, u_shaped=True, iterations=2,
                      batch_size=16, eval_count=16)
    assert 0 <= report.metrics["label_accuracy"] <= 1 and report.metrics["iterations"] == 2
    assert report.config["steps"] == 2 and report.artefacts["attack"].nets.head is not None
    assert report.artefacts["attack"].config.batch_size == 16  # one batch size for private and auxiliary data
    again = run_sdar(xs[:48], ys[:48], xs[48:], ys[48:], model="resnet20", level=4, u_shaped=True, iterations=2,
                     batch_size=16, eval_count=16)
    assert torch.equal(again.artefacts["reconstructions"].images, report.artefacts["reconstructions"].images)


@pytest.mark.slow  # benchmark plumbing end to end (ResNet-20 at level 7 for three iterations)
def test_the_speed_benchmark_times_both_sides(tmp_path):
    from test_cli import run

    official = tmp_path / "fake-tf-python"  # stands in for the official code: 2 s per iteration
    official.write_text("#!/bin/sh\necho 'official s/it: 2.0'\n")
    official.chmod(0o755)
    (tmp_path / "repo" / "src").mkdir(parents=True)
    r = run("benchmarks/sdar_speed.py", "--official-repo", tmp_path / "repo", "--official-python", official,
            "--iters", 2, "--repeats", 1, "--out", tmp_path / "speed", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (round1,) = json.loads((tmp_path / "speed.json").read_text())["rounds"]
    assert round1["official"] == 2.0 and set(round1["ours"]) == {"fp32", "bf16"}
    assert all(round1["official_over_ours"][p] == 2.0 / v > 0 for p, v in round1["ours"].items())
    assert "| 1 | 2.000 |" in (tmp_path / "speed.md").read_text()
    bad = run("benchmarks/sdar_speed.py", "--official-repo", tmp_path / "repo", "--precisions", "fp16", cwd=tmp_path)
    assert bad.returncode == 2 and "--precisions" in bad.stderr and "Traceback" not in bad.stderr


def test_run_sdar_puts_the_clients_defenses_in_force_in_training_and_at_inference(one_thread):
    from unsplit.protocol import Defense
    from unsplit.sdar import run_sdar

    class Spy(Defense):
        name = "spy"
        acts_on = frozenset({"smashed"})

        def __init__(self):
            self.phases = []

        def smashed(self, z, ctx=None):
            self.phases.append(ctx.phase)
            return z

    g = torch.Generator().manual_seed(0)
    xs, ys = torch.rand(64, 3, 32, 32, generator=g), torch.arange(64) % 10
    spy = Spy()
    run_sdar(xs[:32], ys[:32], xs[32:], ys[32:], level=4, iterations=2, batch_size=16, eval_count=16, defenses=[spy])
    assert spy.phases == ["train", "train", "inference"]


def test_run_sdar_in_the_channels_last_layout_changes_only_rounding(one_thread):
    from unsplit.sdar import run_sdar

    g = torch.Generator().manual_seed(0)
    xs, ys = torch.rand(64, 3, 32, 32, generator=g), torch.arange(64) % 10
    runs = {layout: run_sdar(xs[:32], ys[:32], xs[32:], ys[32:], level=4, iterations=2, batch_size=16, eval_count=16,
                             channels_last=layout) for layout in (False, None)}  # None: channels-last on a CPU
    for layout, report in runs.items():
        for net in (report.artefacts["topology"].front, report.artefacts["attack"].nets.decoder):
            conv = next(p for p in net.parameters() if p.dim() == 4)
            assert conv.is_contiguous(memory_format=torch.channels_last) == (layout is None)
        assert report.config["channels_last"] == (layout is None)
        assert report.artefacts["reconstructions"].images.is_contiguous()  # what a user gets is in the usual layout
    plain, fast = (runs[k].artefacts["reconstructions"].images for k in (False, None))
    assert torch.allclose(plain, fast, atol=1e-3)
    assert runs[None].metrics["mse"] == pytest.approx(runs[False].metrics["mse"], rel=1e-3)
    assert not to_channels_last([nn.Conv2d(1, 1, 1)], "cuda")  # the default converts on a CPU only
    assert runs[None].config["precision"] == "fp32" and "precision" not in runs[None].artefacts["attack"].settings()
    half = run_sdar(xs[:32], ys[:32], xs[32:], ys[32:], level=4, iterations=2, batch_size=16, eval_count=16,
                    precision="bf16")
    assert half.config["precision"] == "bf16" and half.artefacts["attack"].precision == "bf16"
    assert half.metrics["mse"] == pytest.approx(runs[None].metrics["mse"], rel=0.05)  # two steps: rounding only
    with pytest.raises(ValueError, match="precision"):
        run_sdar(xs[:32], ys[:32], xs[32:], ys[32:], precision="fp16")
    z = torch.rand(4, 8, 5, 5)
    noise = [GaussianNoise(0.5) for _ in range(2)]
    torch.manual_seed(1)
    plain = noise[0].smashed(z)
    torch.manual_seed(1)
    assert torch.equal(noise[1].smashed(z.contiguous(memory_format=torch.channels_last)), plain)  # the same draw
