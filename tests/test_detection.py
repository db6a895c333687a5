"""SplitGuard (Erdoğan et al., WPES'22): the score formula, and honest vs hijacking servers on a tiny problem."""
import math

import pytest
import torch
from test_fsha import _crosses, _encoder, _tiny_server, one_thread  # noqa: F401  (a fixture)
from torch import nn

from unsplit.base import Report
from unsplit.detection import SplitGuard, SplitGuardRunConfig, run_detection, run_splitguard, splitguard_score
from unsplit.fsha import DummyServer
from unsplit.protocol import Topology
from unsplit.training import StepLosses, train_split


def test_score_formula_on_hand_made_vectors():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # fakes orthogonal to the regular batches and much larger; the two regular halves identical in direction
    x = splitguard_score(3 * e2, 3.0, e1, 1.0, e1, 1.5, raw=True)
    d = abs(3.0 - 1.25) + 0.5
    assert x == pytest.approx(math.pi / 2 * 1.75 / d)
    assert splitguard_score(3 * e2, 3.0, e1, 1.0, e1, 1.5) == pytest.approx((1 / (1 + math.exp(-5 * x))) ** 2)
    # fakes that look like the regular batches score low
    assert splitguard_score(e1, 1.0, e1, 1.0, e1 + 0.1 * e2, 1.2) < 0.3
    with pytest.raises(ValueError):
        SplitGuard(p_fake=0)


def test_splitguard_separates_an_honest_server_from_fsha():
    x = _crosses(512, 0)
    rows = (x[:, 0, :, 0] > 0).float().argmax(1)
    y = (rows * 5 // 13).clamp(max=4)  # the task: where the horizontal bar is (5 classes)
    results = {}
    for who in ("honest", "fsha"):
        torch.manual_seed(0)
        t = Topology(_encoder(), nn.Sequential(nn.Flatten(), nn.Linear(128, 5)))
        guard = SplitGuard(p_fake=0.2, start=5, num_classes=5)
        before = [p.detach().clone() for p in t.front.parameters()]
        callbacks = [_tiny_server(_crosses(512, 1))] if who == "fsha" else []
        train_split(t, x, y, epochs=4, batch_size=32, callbacks=callbacks, defenses=[guard],
                    optimizers=lambda p: torch.optim.Adam(p, lr=2e-3))
        assert not all(torch.equal(a, b) for a, b in zip(before, t.front.parameters()))
        assert len(guard.fake_steps) >= 5 and len(guard.scores) >= 4
        results[who] = guard
    honest, fsha = results["honest"], results["fsha"]
    assert min(s for _, s in honest.scores) > 0.9 and honest.alarm_step() is None
    assert sum(s for _, s in fsha.scores) / len(fsha.scores) < 0.7 and fsha.alarm_step() is not None
    # as a detector: its result, scored by metric code, beats the detector that never alarms on the hijacked run
    assert honest.result().score(attacked=False)["correct"] and not honest.result().detected
    verdict = fsha.result().score(attacked=True)
    assert verdict["correct"] and not verdict["baseline_correct"] and verdict["alarm_step"] == fsha.alarm_step()
    assert list(fsha.result().scores) == [s for _, s in fsha.scores]


def test_a_fake_batch_is_never_learned_from():
    x, y = _crosses(64, 0), torch.arange(64) % 5

    def run(steps):
        torch.manual_seed(0)
        t = Topology(_encoder(), nn.Sequential(nn.Flatten(), nn.Linear(128, 5)))
        guard = SplitGuard(p_fake=0.99, start=0, num_classes=5)  # step 0 regular, (almost) every later one fake
        train_split(t, x, y, epochs=1, batch_size=16, defenses=[guard], shuffle=False, max_steps=steps)
        return [p.detach().clone() for p in t.front.parameters()], guard

    torch.manual_seed(0)
    initial = [p.detach().clone() for p in _encoder().parameters()]
    after_one, _ = run(1)
    after_four, guard = run(4)
    assert guard.fake_steps == [1, 2, 3]
    assert not all(torch.equal(a, b) for a, b in zip(initial, after_one))  # the regular batch is learned
    assert all(torch.equal(a, b) for a, b in zip(after_one, after_four))  # the fake ones are not


def test_detection_evasion_makes_the_clients_loss_fall_but_splitguard_still_sees_the_hijack():
    """U-shaped: the client keeps its head and labels. FSHA's dummy server network s̃ (trained on the head's
    gradient) makes the client's own loss fall as in training; f still gets only the critic's gradient."""
    x = _crosses(512, 0)
    y = ((x[:, 0, :, 0] > 0).float().argmax(1) * 5 // 13).clamp(max=4)

    def middle():
        return nn.Sequential(nn.Flatten(), nn.Linear(128, 32), nn.ReLU())

    runs = {}
    for who in ("honest", "fsha", "fsha+dummy"):
        torch.manual_seed(0)
        t = Topology(_encoder(), middle(), nn.Linear(32, 5))
        guard, client = SplitGuard(p_fake=0.2, start=5, num_classes=5), StepLosses()
        callbacks = [client]
        if who != "honest":
            torch.manual_seed(1)
            callbacks.append(_tiny_server(_crosses(512, 1), evasion=DummyServer(
                middle(), lr=2e-3 if who == "fsha+dummy" else 0.0)))
        train_split(t, x, y, epochs=4, batch_size=32, callbacks=callbacks, defenses=[guard],
                    optimizers=lambda p: torch.optim.Adam(p, lr=2e-3))
        first, last = sum(client.losses[:5]) / 5, sum(client.losses[-10:]) / 10
        runs[who] = (first, last, guard)
    assert runs["honest"][1] < 0.7 * runs["honest"][0]
    assert runs["fsha"][1] > 0.9 * runs["fsha"][0]  # without evasion the client's loss does not fall: visible
    assert runs["fsha+dummy"][1] < 0.8 * runs["fsha+dummy"][0] and runs["fsha+dummy"][1] < runs["fsha"][1]
    assert runs["honest"][2].alarm_step() is None
    assert runs["fsha"][2].alarm_step() is not None and runs["fsha+dummy"][2].alarm_step() is not None


def test_the_alarm_snapshot_measures_once_at_the_first_alarm():
    from unsplit.detection import _AlarmSnapshot

    class Guard:
        alarm = None

        def alarm_step(self):
            return self.alarm

    guard, calls = Guard(), []
    snap = _AlarmSnapshot(guard, lambda: calls.append(len(calls)) or float(len(calls)))
    for step in range(6):
        guard.alarm = 3 if step >= 3 else None
        snap.on_step_end(None, 0, step, {})
    assert snap.step == 3 and snap.mse == 1.0 and calls == [0]


@pytest.mark.usefixtures("one_thread")
def test_run_splitguard_reports_and_run_detection_keeps_its_dict():
    g = torch.Generator().manual_seed(0)
    x, xp = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1, torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    y = torch.arange(8) % 10
    report = run_splitguard(x, y, xp, SplitGuardRunConfig(server="fsha", steps=2, batch_size=4, precision="fp32"),
                            probe=x[:2], x_test=x[:4], y_test=y[:4], seed=1)
    assert isinstance(report, Report) and report.attack == "splitguard"
    assert report.metrics["steps"] == 2 and report.metrics["detected"] is False and report.baselines["correct"] is False
    assert report.artefacts["detection"].alarm_step is None and 0 < report.metrics["fsha_mse"] < 4
    old = run_detection(x, y, xp, server="fsha", steps=2, batch_size=4, precision="fp32", probe=x[:2], x_test=x[:4],
                        y_test=y[:4], seed=1)
    assert set(old) == {"scores", "fake_steps", "alarm_step", "client_losses", "steps", "seconds_per_step",
                        "fsha_mse", "fsha_mse_at_alarm", "client_test_accuracy"}
    assert old["client_losses"] == report.artefacts["client_losses"] and old["fsha_mse"] == report.metrics["fsha_mse"]


def test_bad_detection_settings_raise():
    for bad in ({"server": "evil"}, {"threshold": 2.0}, {"precision": "fp8"}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            SplitGuardRunConfig(**bad)
    with pytest.raises(ValueError, match="server"):
        run_detection(torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), torch.zeros(4, 3, 32, 32),
                      server="evil")
