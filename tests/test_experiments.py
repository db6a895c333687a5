"""The trained-model cache (keyed on the whole training case) and the experiments' attack configs."""
import pytest
import torch

from unsplit.experiments import CheckpointMismatch, TrainingCase, inversion_experiment, label_experiment, train_or_load
from unsplit.models import MnistNet


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_cache_is_keyed_on_the_whole_training_case_and_refuses_another_cases_checkpoint(tiny_mnist, tmp_path):
    case = TrainingCase("mnist", epochs=1, seed=0, train_limit=120)
    model, info = train_or_load(case, data_dir=tiny_mnist, cache_dir=tmp_path)
    assert not info["from_checkpoint"] and info["case"]["epochs"] == 1
    assert not list(tmp_path.glob("*.partial"))  # the resumable training state goes once the model is stored
    again, info2 = train_or_load(case, data_dir=tiny_mnist, cache_dir=tmp_path)
    assert info2["from_checkpoint"] and torch.equal(_flat(model), _flat(again))

    # without a defense the cut does not change training: one model for every depth
    assert TrainingCase("mnist", epochs=1, train_limit=120, split_depth=3).name == case.name
    others = [TrainingCase("mnist", epochs=2, train_limit=120),
              TrainingCase("mnist", epochs=1, seed=1, train_limit=120),
              TrainingCase("mnist", epochs=1, train_limit=60),
              TrainingCase("mnist", epochs=1, train_limit=120, defenses=("nopeek:2",), split_depth=2),
              TrainingCase("mnist", epochs=1, train_limit=120, defenses=("nopeek:2",), split_depth=3),
              TrainingCase("mnist", epochs=1, train_limit=120, defenses=("nopeek:8",), split_depth=2),
              TrainingCase("f_mnist", epochs=1, train_limit=120)]
    assert len({c.name for c in others + [case]}) == len(others) + 1
    assert TrainingCase("mnist", defenses=("nopeek:2",), split_depth=2).key()["defenses"] == [
        {"name": "nopeek", "alpha": 2.0}]

    # the example: a checkpoint of another case under an explicit path is refused, naming the difference
    path = tmp_path / f"{case.name}.pt"
    wrong = TrainingCase("mnist", epochs=2, train_limit=120, defenses=("nopeek:2",), split_depth=2)
    with pytest.raises(CheckpointMismatch, match=r"epochs=1 \(wanted 2\)") as err:
        train_or_load(wrong, data_dir=tiny_mnist, checkpoint=path)
    assert "nopeek" in str(err.value)
    legacy = tmp_path / "old.pt"
    torch.save({"model": model.state_dict(), "dataset": "mnist", "epochs": 1}, legacy)
    with pytest.raises(CheckpointMismatch, match="older unsplit"):
        train_or_load(case, checkpoint=legacy)
    _, info3 = train_or_load(wrong, data_dir=tiny_mnist, checkpoint=path, retrain=True)  # explicit retraining
    assert not info3["from_checkpoint"] and torch.load(path)["case"] == wrong.key()


def test_training_case_rejects_bad_cases():
    with pytest.raises(ValueError, match="split depth"):
        TrainingCase("mnist", defenses=("nopeek:2",))
    with pytest.raises(ValueError, match="unknown defense"):
        TrainingCase("mnist", defenses=("blur:2",), split_depth=1)
    with pytest.raises(ValueError, match="unknown dataset"):
        TrainingCase("svhn")
    with pytest.raises(ValueError, match="batch_norm is a CifarNet variant"):
        TrainingCase("mnist", batch_norm=True)
    assert TrainingCase("mnist", defenses=("none",)).defenses == ()


def test_a_users_own_defense_instance_is_a_training_case_keyed_by_its_parameters(tiny_mnist, tmp_path):
    from unsplit.defenses import GaussianNoise, defense_label

    class Blur(GaussianNoise):  # a user's own defense: a built-in one with another name
        name = "blur"

    mine = TrainingCase("mnist", epochs=1, train_limit=60, defenses=(Blur(sigma=0.5),), split_depth=2)
    assert mine.key()["defenses"] == [Blur(sigma=0.5).config()] and mine.key()["defenses"][0]["name"] == "blur"
    assert defense_label(Blur(sigma=0.5)) in mine.name
    assert mine.name != TrainingCase("mnist", epochs=1, train_limit=60, defenses=(Blur(sigma=1.0),),
                                     split_depth=2).name
    defense = mine.defenses[0]
    model, info = train_or_load(mine, data_dir=tiny_mnist, cache_dir=tmp_path)
    assert not info["from_checkpoint"] and mine.defenses[0] is defense  # training used a copy
    _, again = train_or_load(mine, data_dir=tiny_mnist, cache_dir=tmp_path)
    assert again["from_checkpoint"]


def test_the_batch_norm_cifar_network_is_its_own_case():
    plain, bn = TrainingCase("cifar", epochs=1), TrainingCase("cifar", epochs=1, batch_norm=True)
    assert "batch_norm" not in plain.key() and bn.key()["batch_norm"] is True  # earlier checkpoints keep their keys
    assert bn.name.startswith("cifar-bn_") and bn.name != plain.name
    model = bn.build_model()
    assert len(model) == len(plain.build_model())  # same layer indices, so the same split depths
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 6


def test_experiments_take_the_attacks_own_config():
    torch.manual_seed(0)
    model = MnistNet().eval()
    x, y = torch.rand(20, 1, 28, 28), torch.arange(20) % 10
    report, result = inversion_experiment(model, 3, x, y, torch.arange(2), mean_image=x.mean(0, keepdim=True),
                                          attack={"main_iters": 1, "input_iters": 2, "model_iters": 2,
                                                  "tv_kind": "l1", "clamp": True, "input_lr": 0.01})
    assert result.settings["tv_kind"] == "l1" and result.settings["clamp"] and result.settings["input_lr"] == 0.01
    assert report["preset"] == "paper"
    for bad in ({"main_iter": 3}, {"seed": 1}, {"smashed": None}):
        with pytest.raises(ValueError, match="takes no option"):
            inversion_experiment(model, 3, x, y, torch.arange(2), mean_image=x, attack=bad)
    with pytest.raises(ValueError, match="lambda_l2 must be a finite number"):
        inversion_experiment(model, 3, x, y, torch.arange(2), mean_image=x, attack={"lambda_l2": float("nan")})
    with pytest.raises(ValueError, match="takes no option"):
        label_experiment(MnistNet(), x, y, attack={"steps": 3})
    with pytest.raises(ValueError, match="nothing left to score"):
        label_experiment(MnistNet(), x, y, known_per_class=5)


def test_a_noise_defense_draws_the_same_noise_whatever_ran_before():
    from unsplit.defenses import GaussianNoise

    torch.manual_seed(0)
    model = MnistNet().eval()
    x, y = torch.rand(20, 1, 28, 28), torch.arange(20) % 10
    reports = []
    for burn in (0, 1000):
        torch.rand(burn)  # e.g. a model trained in the same process, or loaded from its checkpoint
        report, _ = inversion_experiment(model, 3, x, y, torch.arange(2), mean_image=x.mean(0, keepdim=True),
                                         attack={"main_iters": 1, "input_iters": 2, "model_iters": 2},
                                         defenses=[GaussianNoise(0.5)])
        reports.append(report["mse"])
    assert reports[0] == reports[1]


def test_label_inference_under_dp_sgd_on_the_head_follows_its_poisson_batches():
    # DP-SGD draws its own (Poisson) batches, so the anchors-first order gives way; opacus privatises the head's
    # parameter gradients, not the cut gradient it returns, so the labels of the samples drawn still leak (up to the
    # naming of a class whose one anchor was never drawn)
    from unsplit.defenses import parse_defense

    torch.manual_seed(0)
    x, y = torch.rand(192, 1, 28, 28), torch.arange(192) % 10
    res = label_experiment(MnistNet(), x, y, batch_size=32, defenses=[parse_defense("dpsgd_head:1")], seed=0)
    assert 0.5 < res["coverage"] < 1.0  # (5/6)^6 of the samples are never drawn in one epoch, on average
    assert res["scored"] == round(res["coverage"] * (192 - 10))
    assert res["accuracy_best_renaming"] >= 0.8 and res["accuracy"] > 5 * res["chance_accuracy"]
    plain = label_experiment(MnistNet(), x, y, batch_size=32, seed=0)
    assert plain["coverage"] == 1.0 and plain["scored"] == 182 and plain["accuracy"] >= 0.95


def test_the_runners_return_a_report_with_what_the_wrappers_return():
    from unsplit.attacks import UnSplitConfig, UnSplitLabelsConfig
    from unsplit.experiments import attack_options, run_unsplit, run_unsplit_labels

    torch.manual_seed(0)
    model = MnistNet().eval()
    x, y = torch.rand(20, 1, 28, 28), torch.arange(20) % 10
    config = UnSplitConfig.contrast(main_iters=1, input_iters=2, model_iters=2)
    report = run_unsplit(model, 3, x, y, torch.arange(2), config, mean_image=x.mean(0, keepdim=True))
    assert report.attack == "unsplit" and report.metrics["preset"] == "contrast"
    assert report.baselines["stolen_accuracy"] == report.metrics["baseline_stolen_accuracy"]
    assert report.artefacts["reconstructions"].indices.tolist() == [0, 1]
    assert report.to_json()["config"]["normalize"] == "scale"
    labels = run_unsplit_labels(MnistNet(), x, y, UnSplitLabelsConfig(anchor_steps=5), batch_size=10)
    assert labels.attack == "unsplit_labels" and labels.metrics["scored"] == 10
    assert labels.artefacts["labels"].score(y)["coverage"] == labels.metrics["coverage"]
    with pytest.raises(ValueError, match="takes no option"):
        attack_options(UnSplitConfig, {"normalise": "scale"})
