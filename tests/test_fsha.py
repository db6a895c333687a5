"""FSHA (Pasquini et al., CCS'21): networks per split level, the gradient penalty, the attack as a callback, its config,
its result and the runner."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unsplit.base import Report
from unsplit.fsha import (
    FSHA,
    SMASHED_SHAPES,
    DummyServer,
    FSHAConfig,
    FSHANetworks,
    FSHARunConfig,
    FSHAServer,
    FSHASpeed,
    PropertyInference,
    PropertyMonitor,
    ReconstructionMonitor,
    critic,
    decoder,
    fsha_images,
    gradient_penalty,
    pilot,
    reconstruction_error,
    run_fsha,
)
from unsplit.models import FunnelNet, split
from unsplit.protocol import CutEvent, Topology, read_only
from unsplit.training import train_split


@pytest.fixture
def one_thread():
    """Small networks: one thread (threads only contend on a shared machine); restored afterwards. (Under
    ``-n auto`` every test runs on one thread; their tiny-problem thresholds hold on one thread and on two.)"""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_shapes_at_every_level(level):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    f, _ = split(FunnelNet(), FunnelNet.level_depths[level])
    z = f(x)
    assert tuple(z.shape[1:]) == SMASHED_SHAPES[level]
    for variant in ("paper", "linear"):
        assert pilot(level, variant=variant)(x).shape == z.shape
        out = decoder(level, variant=variant)(z)
        assert out.shape == x.shape and float(out.abs().max()) <= 1
    assert critic(level)(z).shape == (2, 1)
    assert any(isinstance(m, torch.nn.SiLU) for m in pilot(level))
    assert not any(isinstance(m, torch.nn.SiLU) for m in pilot(level, variant="linear"))


def test_fsha_images_replicate_resize_and_rescale():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, :, 14:] = 1.0
    out = fsha_images(x)
    assert out.shape == (2, 3, 32, 32) and float(out.min()) == -1.0 and float(out.max()) == 1.0
    assert torch.equal(out[:, 0], out[:, 2])
    with pytest.raises(ValueError, match="expected"):
        fsha_images(torch.zeros(2, 2, 32, 32))


def test_per_channel_gradient_penalty_equals_a_slow_loop():
    torch.manual_seed(0)
    d = critic(4)
    real, fake = torch.randn(3, 256, 4, 4), torch.randn(3, 256, 4, 4)
    fast = gradient_penalty(d, real, fake, form="per_channel", generator=torch.Generator().manual_seed(5))
    eps = torch.rand(3, 1, 1, 1, generator=torch.Generator().manual_seed(5))
    terms = []
    for i in range(3):  # one sample, one channel at a time
        mixed = (eps[i] * fake[i:i + 1] + (1 - eps[i]) * real[i:i + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(d(mixed).sum(), mixed)
        for c in range(256):
            terms.append((float(g[0, c].pow(2).sum().sqrt()) - 1) ** 2)
    assert float(fast) == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    flat = gradient_penalty(d, real, fake, form="flat", generator=torch.Generator().manual_seed(5))
    assert float(flat) != pytest.approx(float(fast), rel=1e-2)  # the two forms differ


def test_the_server_hijacks_through_the_protocol_and_never_sees_inputs_labels_or_weights():
    torch.manual_seed(0)
    model = FunnelNet()
    t = Topology.split(model, front_depth=FunnelNet.level_depths[4])
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    labels = torch.full((16,), 10 ** 6)  # nonsense labels: nobody may use them
    server = FSHA(torch.rand(32, 3, 32, 32) * 2 - 1, level=4, gp_form="flat")
    middle = [p.detach().clone() for p in t.middle.parameters()]
    front = [p.detach().clone() for p in t.front.parameters()]
    losses = train_split(t, x, labels, epochs=2, batch_size=8, callbacks=[server])
    assert all(v != v for v in losses)  # nan: the honest server's step never ran
    assert all(torch.equal(a, p) for a, p in zip(middle, t.middle.parameters()))
    assert not all(torch.equal(a, p) for a, p in zip(front, t.front.parameters()))  # the client followed the critic
    assert len(server.history["hijack_loss"]) == 4
    assert server.reconstruct(t.front(x[:2]).detach()).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="public data"):
        FSHA(torch.rand(4, 1, 28, 28))
    with pytest.raises(ValueError, match="level"):
        FSHA(torch.rand(4, 3, 32, 32), level=5)


# a tiny problem: 16x16 greyscale "crosses" (a horizontal and a vertical bar at random places), small networks
def _crosses(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 1, 16, 16), -1.0)
    rows, cols = torch.randint(0, 13, (n,), generator=g), torch.randint(0, 13, (n,), generator=g)
    for i in range(n):
        x[i, :, rows[i]:rows[i] + 3, :] = 1.0
        x[i, :, :, cols[i]:cols[i] + 3] = 1.0
    return x


def _encoder():
    return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 8, 3, 2, 1))


def _tiny_decoder():
    return nn.Sequential(nn.ConvTranspose2d(8, 16, 3, 2, 1, output_padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(16, 1, 3, 2, 1, output_padding=1), nn.Tanh())


def _tiny_critic():
    return nn.Sequential(nn.Conv2d(8, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 1))


def _tiny_server(public, lr=2e-3, seed=0, **kw):
    """FSHA with networks for the tiny front's (8, 4, 4) smashed data."""
    dec, crit = _tiny_decoder(), _tiny_critic()  # (this order: the tests' thresholds were set with these weights)
    return FSHA(public, pilot=_encoder(), decoder=dec, critic=crit, lr_tilde=lr, lr_critic=lr, gp_weight=10, seed=seed,
                **kw)


def _tiny_topology(seed=0):
    torch.manual_seed(seed)
    return Topology(_encoder(), nn.Sequential(nn.Flatten(), nn.Linear(128, 2)))


def test_the_hijack_reconstructs_private_inputs_far_better_than_the_baselines():
    private, public = _crosses(512, 0), _crosses(512, 1)
    t = _tiny_topology()
    server = _tiny_server(public)
    monitor = ReconstructionMonitor(server, private, window=20)
    untrained = reconstruction_error(t.front, server, private)["mse"]
    mean_image = float((public.mean(0) - private).pow(2).mean())  # the attacker's best guess without the attack
    train_split(t, private, torch.zeros(512, dtype=torch.long), epochs=30, batch_size=32, callbacks=[server, monitor],
                optimizers={"front": lambda p: torch.optim.Adam(p, lr=2e-3)})
    after = reconstruction_error(t.front, server, private)["mse"]  # inputs sent after training, BN in eval mode
    assert untrained > 0.8 and mean_image > 0.8
    assert after < 0.3 * untrained and after < 0.3 * mean_image
    assert monitor.running() < 0.3 * monitor.errors[0]


def test_the_fused_step_equals_a_plain_transcription():
    torch.manual_seed(0)
    public = torch.rand(16, 3, 32, 32) * 2 - 1
    z = torch.randn(4, 256, 4, 4)
    event = CutEvent(0, 0, "front", read_only(torch.arange(4)), read_only(z), None, 4, None, "train")
    fused, plain = FSHA(public, seed=3), FSHA(public, seed=3, speed=FSHASpeed(fused=False))
    g_fused, g_plain = fused.server_gradient(event), plain.server_gradient(event)
    assert g_fused.abs().sum() > 0
    assert torch.allclose(g_fused, g_plain, rtol=1e-4, atol=1e-9)
    scale = max(float(p.grad.abs().max()) for p in plain.critic.parameters())
    for a, b in zip(fused.critic.parameters(), plain.critic.parameters()):  # the critic's update: same gradients
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5 * scale)
    fast = FSHA(public, seed=3, speed=FSHASpeed("bf16", channels_last=True)).server_gradient(event)
    cos = F.cosine_similarity(fast.flatten(), g_plain.flatten(), dim=0)
    assert cos > 0.95  # bf16 follows the fp32 direction


def test_the_server_reads_no_label_and_no_server_weight():
    """Run twice: honest labels and weights, then garbage labels and a NaN-poisoned middle. A server that looked at
    either would change (or NaN) the trajectory; FSHA's must be bit-identical."""
    private, public = _crosses(64, 0), _crosses(64, 1)
    runs = []
    for poisoned in (False, True):
        t = _tiny_topology()
        labels = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(int(poisoned)))
        if poisoned:
            with torch.no_grad():
                for p in t.middle.parameters():
                    p.fill_(float("nan"))
        server = _tiny_server(public)
        train_split(t, private, labels, epochs=2, batch_size=16, callbacks=[server])
        runs.append((torch.cat([p.flatten() for p in t.front.parameters()]), server.history["critic_loss"]))
    (front_a, hist_a), (front_b, hist_b) = runs
    assert torch.isfinite(front_b).all() and torch.equal(front_a, front_b) and hist_a == hist_b


def test_an_fsha_run_resumes_from_its_checkpoint_exactly(tmp_path):
    private, public = _crosses(64, 0), _crosses(64, 1)
    y = torch.zeros(64, dtype=torch.long)

    def run(steps, path=None, seed=0):
        t, server = _tiny_topology(seed), _tiny_server(public, seed=seed)
        monitor = ReconstructionMonitor(server, private, window=4)
        train_split(t, private, y, epochs=3, batch_size=16, max_steps=steps, callbacks=[server, monitor],
                    checkpoint=path, checkpoint_every=3)
        return t, server, monitor

    t_whole, s_whole, m_whole = run(10)
    run(5, tmp_path / "c.pt")
    t_res, s_res, m_res = run(10, tmp_path / "c.pt", seed=7)  # other initial weights: all must come from the file
    assert m_res.errors == pytest.approx(m_whole.errors, rel=1e-5) and len(m_res.errors) == 10
    for key, values in s_whole.history.items():
        assert s_res.history[key] == pytest.approx(values, rel=1e-5)
    for a, b in zip([*t_whole.front.parameters(), *s_whole.critic.parameters()],
                    [*t_res.front.parameters(), *s_res.critic.parameters()]):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("objective", ["classifier", "autoencoder"])
def test_property_inference(objective):
    """The paper's classifier-only pilot trains C_att perfectly on X_pub, yet on this tiny problem the hijacked f
    lands on permuted classes (recorded, not hidden); the autoencoder pilot (C_att on its features) reads the private
    attribute far above chance."""
    private, public = _crosses(512, 0), _crosses(512, 1)

    def attribute(x):  # where the horizontal bar is: 5 classes
        return ((x[:, 0, :, 0] > 0).float().argmax(1) * 5 // 13).clamp(max=4)

    t = _tiny_topology()
    server = _tiny_server(public, property_inference=PropertyInference(
        attribute(public), objective, classifier=nn.Sequential(nn.Flatten(), nn.Linear(128, 5))))
    monitor = PropertyMonitor(server, attribute(private), window=16)
    train_split(t, private, torch.zeros(512, dtype=torch.long), epochs=30, batch_size=32,
                callbacks=[server, monitor], optimizers={"front": lambda p: torch.optim.Adam(p, lr=2e-3)})
    with torch.no_grad():
        public_acc = float((server.infer_property(server.pilot(public)).argmax(1) == attribute(public)).float().mean())
        t.front.eval()
        private_acc = float((server.infer_property(t.front(private)).argmax(1) == attribute(private)).float().mean())
    assert public_acc > 0.9
    chance = float(torch.bincount(attribute(private)).max()) / len(private)
    if objective == "autoencoder":
        assert private_acc > 0.7 and monitor.running() > 0.6 > chance + 0.25
        assert server.reconstruct(t.front(private[:2]).detach()).shape == (2, 1, 16, 16)
    else:
        assert private_acc < chance  # the classes come out permuted: the paper's objective fails here
        with pytest.raises(ValueError, match="infer_property"):
            server.reconstruct(t.front(private[:2]).detach())
    with pytest.raises(ValueError, match="one integer per public sample"):
        FSHA(public, property_inference=PropertyInference(torch.zeros(3, dtype=torch.long)), pilot=_encoder())


def test_running_mean_matches_the_monitors_window():
    from unsplit.util import running_mean

    server = FSHA(torch.zeros(2, 3, 32, 32))
    monitor = ReconstructionMonitor(server, torch.zeros(2, 3, 32, 32), window=3)
    monitor.errors = [4.0, 2.0, 0.0, 6.0, 1.0]
    assert running_mean(monitor.errors, 3) == pytest.approx([monitor.running(i) for i in range(5)])
    assert running_mean(monitor.errors, 3) == pytest.approx([4.0, 3.0, 2.0, 8 / 3, 7 / 3])
    with pytest.raises(ValueError, match="window"):
        running_mean([1.0], 0)


def test_fsha_attacks_a_users_own_front_and_beats_the_mean_image(one_thread):
    """The attack pattern on a user's own small front: its result, scored by metric code, beats the trivial baseline
    (every target guessed as the mean public image)."""
    private, public = _crosses(512, 0), _crosses(512, 1)
    torch.manual_seed(0)
    topology = Topology(_encoder(), nn.Sequential(nn.Flatten(), nn.Linear(128, 2)))
    attack = FSHA(public, pilot=_encoder(), decoder=_tiny_decoder(), critic=_tiny_critic(), lr_tilde=2e-3,
                  lr_critic=2e-3, gp_weight=10, targets=32)
    train_split(topology, private, torch.zeros(512, dtype=torch.long), epochs=10, batch_size=32, callbacks=[attack],
                optimizers={"front": lambda p: torch.optim.Adam(p, lr=2e-3)})
    result = attack.result()
    assert result.images.shape == (32, 1, 16, 16) and len(result.indices) == 32
    assert torch.equal(result.indices, result.indices.sort().values) and 0 <= float(result.images.min())
    score = result.score((private[result.indices] + 1) / 2, reference=(public + 1) / 2)
    assert score["mse"] < 0.6 * score["baseline_mse"]
    assert score["correlation"] > score["baseline_correlation"] + 0.3


def test_the_attack_records_the_last_targets_received_by_index():
    attack = _tiny_server(_crosses(8, 1), targets=3)
    with pytest.raises(ValueError, match="no smashed data"):
        attack.result()
    for step, idx in enumerate(([0, 1, 2, 3], [5, 2, 4])):
        z = torch.full((len(idx), 8, 4, 4), float(step))
        attack.on_cut(CutEvent(0, step, "front", read_only(torch.tensor(idx)), read_only(z), None, len(idx)))
    result = attack.result()
    assert result.indices.tolist() == [2, 4, 5]  # the last three received, in index order; 2 with its latest z
    assert torch.equal(result.images, (attack.reconstruct(torch.ones(3, 8, 4, 4)) + 1) / 2)
    state = attack.state_dict()
    again = _tiny_server(_crosses(8, 1), targets=3)
    again.load_state_dict(state)
    assert torch.equal(again.result().indices, result.indices)


def test_bad_settings_raise_clear_errors():
    public = torch.rand(4, 3, 32, 32) * 2 - 1
    for bad, match in (({"level": 5}, "level"), ({"loss": "hinge"}, "loss"), ({"gp_form": "x"}, "gp_form"),
                       ({"gp_weight": -1.0}, "gp_weight"), ({"lr_tilde": float("nan")}, "lr_tilde"),
                       ({"targets": 0}, "targets"), ({"batch_size": 0}, "batch_size"),
                       ({"pilot_variant": "deep"}, "pilot_variant")):
        with pytest.raises(ValueError, match=match):
            FSHAConfig(**bad)
    with pytest.raises(ValueError, match="precision"):
        FSHASpeed(precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        FSHASpeed(precision="auto")  # "auto" is resolved by the caller (resolve_precision), never stored
    with pytest.raises(ValueError, match="property_objective"):
        PropertyInference(torch.zeros(4, dtype=torch.long), objective="oracle")
    with pytest.raises(ValueError, match="lr_dummy"):
        DummyServer(nn.Identity(), lr=-1)
    with pytest.raises(ValueError, match="iterations"):
        FSHARunConfig(iterations=0)
    with pytest.raises(TypeError, match="no setting"):
        FSHA(public, lr=1e-3)
    with pytest.raises(ValueError, match="not both"):
        FSHA(public, networks=FSHANetworks(_encoder(), None, _tiny_critic()), pilot=_encoder())


def test_presets_and_the_level_networks():
    assert FSHAConfig.at_level(2).level == 2 and FSHAConfig.official_head().pilot_variant == "linear"
    assert FSHAConfig.official_notebook("nopeek").scale == 50 and FSHAConfig.official_notebook().scale == 1
    assert FSHAConfig() == FSHAConfig.official_notebook() and FSHA.Config is FSHAConfig
    with pytest.raises(ValueError, match="variant"):
        FSHAConfig.official_notebook("noisy")
    nets = FSHANetworks.level(1)
    z = nets.pilot(torch.zeros(2, 3, 32, 32))
    assert tuple(z.shape[1:]) == SMASHED_SHAPES[1] and nets.decoder(z).shape == (2, 3, 32, 32)
    assert FSHA(torch.zeros(2, 3, 32, 32), networks=nets, level=1).pilot is nets.pilot


def test_the_earlier_server_keywords_build_the_same_attack():
    """FSHAServer(pilot_net=..., precision=..., dummy_server=..., ...) is FSHA with the same parts: same steps."""
    public = _crosses(16, 1)
    z = torch.randn(4, 8, 4, 4)
    event = CutEvent(0, 0, "front", read_only(torch.arange(4)), read_only(z), None, 4, None, "train")
    grads = []
    for legacy in (True, False):
        torch.manual_seed(0)
        pilot, dec, crit, dummy = _encoder(), _tiny_decoder(), _tiny_critic(), nn.Linear(2, 2)
        if legacy:
            attack = FSHAServer(public, pilot_net=pilot, decoder_net=dec, critic_net=crit, fused=False, loss="gan",
                                dummy_server=dummy, lr_dummy=0.0, seed=2)
        else:
            attack = FSHA(public, pilot=pilot, decoder=dec, critic=crit, speed=FSHASpeed(fused=False), loss="gan",
                          evasion=DummyServer(dummy, 0.0), seed=2)
        grads.append(attack.server_gradient(event))
        assert attack.observes == {"front.smashed", "head.gradient"} and attack.opt_dummy is not None
    assert torch.equal(*grads)


def test_run_fsha_returns_a_report_that_keeps_the_earlier_attributes(one_thread):
    private, public = torch.rand(8, 3, 32, 32) * 2 - 1, torch.rand(8, 3, 32, 32) * 2 - 1
    report = run_fsha(private, public, FSHARunConfig(iterations=2, batch_size=4, window=2), seed=1)
    assert isinstance(report, Report) and report.attack == "fsha"
    assert report.metrics["iterations"] == 2 and "mse" in report.metrics and "mse" in report.baselines
    assert len(report.monitor.errors) == 2 and report.server is report.artefacts["attack"]
    assert report.artefacts["reconstructions"].images.shape == (8, 3, 32, 32)
    assert report.to_json()["config"]["level"] == 4
    # the earlier call form: the same run
    old = run_fsha(private, public, level=4, iterations=2, batch_size=4, window=2, server_options={"scale": 1.0},
                   seed=1)
    assert old.monitor.errors == report.monitor.errors


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    from unsplit.util import resolve_precision

    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")
    for avx512_bf16, amx, want in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_precision("auto", "cpu") == want
    for major, want in ((7, "fp32"), (8, "bf16")):  # a V100, an A100
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, m=major: (m, 0))
        assert resolve_precision("auto", "cuda") == want
