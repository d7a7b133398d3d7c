"""NMoE training stages: gates, FedSC loss, DP noise, augmentation, a tiny end-to-end run."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedsim.learning.datasets import load_dataset
from fedsim.learning.models import MoEConfig
from fedsim.learning.nmoe import (
    NMoETrainConfig,
    augment,
    client_data,
    dp_sigma,
    fedsc_loss,
    gaussian_mechanism,
)
from fedsim.learning.nmoe_gates import (
    RanGate,
    fedgate_local,
    gate_module,
    normalise_gradients_,
    rollgate_labels,
    select_clients,
)
from fedsim.learning.nmoe_model import (
    evaluate_per_client,
    local_ratio,
    train_fedgate,
    train_nmoe,
)
from fedsim.learning.partition import partition
from fedsim.rng import RngStreams


@pytest.fixture(autouse=True)
def one_thread():  # noqa: ANN201
    """Run with one torch thread (tiny tensors: threads only add overhead), then restore."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------- RanGate


def test_rangate_follows_given_distribution() -> None:
    probs = [0.1, 0.2, 0.3, 0.4]
    idx, w = RanGate(4, probs).route(40_000, 1, torch.Generator().manual_seed(0))
    freq = np.bincount(idx[:, 0].numpy(), minlength=4) / 40_000
    assert np.allclose(freq, probs, atol=0.01)
    assert torch.all(w == 1.0)


def test_rangate_uniform_by_default_and_top_k_distinct() -> None:
    idx, w = RanGate(5).route(20_000, 2, torch.Generator().manual_seed(1))
    assert idx.shape == (20_000, 2) and torch.all(idx[:, 0] != idx[:, 1])
    freq = np.bincount(idx.reshape(-1).numpy(), minlength=5) / idx.numel()
    assert np.allclose(freq, 0.2, atol=0.01)
    assert torch.allclose(w, torch.full_like(w, 0.5))


def test_rangate_rejects_bad_probs() -> None:
    with pytest.raises(ValueError, match="probs"):
        RanGate(3, [0.5, 0.5])


# ---------------------------------------------------------------------- RollGate


@pytest.mark.parametrize(("n", "k", "p"), [(100, 10, 0.7), (37, 4, 0.7), (50, 3, 0.5)])
def test_rollgate_labels_exact_own_share_and_uniform_rest(n: int, k: int, p: float) -> None:
    own = 1
    lab = rollgate_labels(n, own, k, p, torch.Generator().manual_seed(2))
    counts = np.bincount(lab.numpy(), minlength=k)
    assert len(lab) == n
    assert counts[own] == round(p * n)
    rest = np.delete(counts, own)
    assert rest.sum() == n - round(p * n)
    assert rest.max() - rest.min() <= 1


def test_rollgate_labels_are_shuffled() -> None:
    lab = rollgate_labels(100, 0, 10, 0.7, torch.Generator().manual_seed(3))
    assert not torch.all(lab[:70] == 0)


# ---------------------------------------------------------------------- FedGate


def test_select_clients_uses_fraction() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        sel = select_clients(10, 0.7, rng)
        assert len(sel) == 7 and len(set(sel)) == 7 and all(0 <= c < 10 for c in sel)
    assert len(select_clients(10, 0.01, rng)) == 1


def test_normalise_gradients_gives_unit_norm() -> None:
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0])
    before = normalise_gradients_([a, b])
    assert before == pytest.approx(5.0)
    total = math.sqrt(float((a.grad**2).sum() + (b.grad**2).sum()))
    assert total == pytest.approx(1.0)
    assert torch.allclose(a.grad, torch.tensor([0.6, 0.0, 0.0]))


def _feature_task(k: int = 4, n: int = 40, d: int = 8) -> tuple[MoEConfig, list[torch.Tensor], list[torch.Tensor], list[dict]]:
    cfg = MoEConfig((d,), 3, backbone="mlp", widths=(8,), feature_dim=d, num_experts=k, top_k=1, expert_hidden=8)
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(n, d, generator=g) for _ in range(k)]
    ys = [torch.randint(0, 3, (n,), generator=g) for _ in range(k)]
    from fedsim.learning.models import Expert

    experts = []
    for _ in range(k):
        e = Expert(cfg)
        with torch.no_grad():
            for p in e.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        experts.append({kk: v.clone() for kk, v in e.state_dict().items()})
    return cfg, feats, ys, experts


def test_fedgate_local_step_moves_gate_by_exactly_lr() -> None:
    cfg, feats, ys, experts = _feature_task()
    from fedsim.learning.nmoe_gates import expert_logp_table

    tc = NMoETrainConfig(gate_lr=0.25, gate_local_epochs=1, batch_size=1000)  # one step
    gate = gate_module(cfg, 4)
    st = {k: v.clone() for k, v in gate.state_dict().items()}
    new, norms = fedgate_local(st, feats[0], expert_logp_table(feats[0], ys[0], experts, cfg), cfg, tc, torch.Generator().manual_seed(0))
    assert len(norms) == 1 and norms[0] > 0
    step = math.sqrt(sum(float(((new[k] - st[k]) ** 2).sum()) for k in st))
    assert step == pytest.approx(0.25, rel=1e-5)


def test_train_fedgate_uses_configured_fraction() -> None:
    cfg, feats, ys, experts = _feature_task(k=10, n=10)
    tc = NMoETrainConfig(gate_rounds=5, fedgate_fraction=0.7)
    _, hist = train_fedgate(feats, ys, experts, cfg, tc, seed=0)
    assert len(hist) == 5 and all(len(h) == 7 for h in hist)
    assert len({tuple(h) for h in hist}) > 1  # a random draw every round
    _, hist3 = train_fedgate(feats, ys, experts, cfg, replace(tc, fedgate_fraction=0.3), seed=0)
    assert all(len(h) == 3 for h in hist3)


# ---------------------------------------------------------------------- FedSC


def _direct_objective(z1: np.ndarray, z2: np.ndarray, r_oth: np.ndarray, q: float) -> float:
    n, d = z1.shape
    tr_plus = sum(float(z1[a] @ z2[a]) for a in range(n)) / n
    r = np.zeros((d, d))
    for a in range(n):
        r += np.outer(z1[a], z1[a]) + np.outer(z2[a], z2[a])
    r /= 2 * n
    fro2 = sum(r[i, j] ** 2 for i in range(d) for j in range(d))
    cross = sum(r[i, j] * r_oth[j, i] for i in range(d) for j in range(d))
    return -tr_plus + q / 2 * fro2 + (1 - q) * cross


def test_fedsc_loss_matches_direct_computation() -> None:
    z1 = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    z2 = torch.tensor([[0.8, 0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [1.0, 0.0, 0.0]])
    r_oth = torch.tensor([[0.5, 0.1, 0.0], [0.1, 0.3, 0.05], [0.0, 0.05, 0.2]])
    for q in (0.1, 0.5, 1.0):
        got = float(fedsc_loss(z1, z2, r_oth if q < 1 else None, q))
        want = _direct_objective(z1.numpy(), z2.numpy(), r_oth.numpy(), q)
        assert got == pytest.approx(want, abs=1e-6)


def test_fedsc_loss_decomposes_global_spectral_loss() -> None:
    # sum_i q_i * 2 * L_i differs from the global loss -2 Tr R+ + ||sum_j q_j R_j||^2 only by
    # the double count of the cross terms: check with two clients and exact (noise-free) matrices
    g = torch.Generator().manual_seed(5)
    zs = [torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1) for _ in range(4)]
    (a1, a2), (b1, b2) = (zs[0], zs[1]), (zs[2], zs[3])
    q = 0.25
    ra = 0.5 * (a1.T @ a1 + a2.T @ a2) / 6
    rb = 0.5 * (b1.T @ b1 + b2.T @ b2) / 6
    la = float(fedsc_loss(a1, a2, rb, q))
    # direct: -Tr Ra+ + q/2 ||Ra||^2 + (1-q) Tr(Ra Rb)
    want = -float(torch.trace(a1.T @ a2 / 6)) + q / 2 * float((ra**2).sum()) + (1 - q) * float(torch.trace(ra @ rb))
    assert la == pytest.approx(want, abs=1e-6)
    # gradient only through the client's own batch, not the shared matrix
    rb_req = rb.clone().requires_grad_(True)
    fedsc_loss(a1.clone().requires_grad_(True), a2, rb_req, q).backward()
    assert rb_req.grad is None


def test_dp_sigma_formula_and_noise_scale() -> None:
    eps, delta, n = 2.0, 1e-5, 100
    sigma = dp_sigma(eps, delta, 1.0 / n)
    # the analytic Gaussian mechanism: exactly delta at eps (tests/test_nmoe_dp.py checks it independently)
    from fedsim.learning.dp import classical_sigma, gaussian_delta

    assert gaussian_delta(eps, sigma, 1.0 / n) == pytest.approx(delta, rel=1e-6)
    assert sigma < classical_sigma(eps, delta, 1.0 / n)
    noisy = gaussian_mechanism(torch.zeros(300, 300, dtype=torch.float64), sigma, torch.Generator().manual_seed(6))
    assert torch.allclose(noisy, noisy.T)
    upper = noisy[torch.triu(torch.ones(300, 300, dtype=torch.bool))]
    assert float(upper.std()) == pytest.approx(sigma, rel=0.03)
    assert abs(float(upper.mean())) < 3 * sigma / math.sqrt(upper.numel())
    assert torch.equal(gaussian_mechanism(torch.eye(3), 0.0, torch.Generator()), torch.eye(3))


# ---------------------------------------------------------------------- augmentation


def test_augment_is_seeded_and_shape_preserving() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(7), dataset="cifar10")
    b = augment(x, torch.Generator().manual_seed(7), dataset="cifar10")
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    d = augment(torch.ones(4, 1, 8, 8), torch.Generator().manual_seed(8), dataset="digits")
    assert d.shape == (4, 1, 8, 8)
    v = augment(torch.zeros(5, 3), torch.Generator().manual_seed(9))
    assert v.shape == (5, 3) and float(v.abs().sum()) > 0


def test_colour_jitter_is_seeded_distorts_colour_and_greys_some_images() -> None:
    from fedsim.learning.nmoe import colour_jitter

    x = torch.randn(200, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # the global RNG plays no part
    a = colour_jitter(x, torch.Generator().manual_seed(7))
    torch.manual_seed(456)
    b = colour_jitter(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == x.shape
    grey = (a[:, 0] == a[:, 1]).all((1, 2)) & (a[:, 1] == a[:, 2]).all((1, 2))
    assert 20 <= int(grey.sum()) <= 60  # p_gray = 0.2 of 200 images
    assert not torch.allclose(a[~grey], x[~grey])  # colours changed
    assert torch.equal(colour_jitter(x, torch.Generator().manual_seed(7), strength=0.0, p_gray=0.0), x)


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def digits_clients():  # noqa: ANN201
    rng = RngStreams(0)
    ds = load_dataset("digits", rng=rng.fresh_numpy("data"))
    splits = partition("noniid_tau", ds.y_train.numpy(), 5, rng.fresh_numpy("split"), tau=0.3)
    cfg = MoEConfig(ds.input_shape, 10, backbone="cnn", widths=(8,), feature_dim=32, num_experts=5, top_k=1, expert_hidden=32)
    return ds, client_data(ds, splits), cfg


def test_three_stages_beat_chance_on_digits(digits_clients) -> None:  # noqa: ANN001
    ds, cl, cfg = digits_clients
    tc = NMoETrainConfig(extractor="fedce", gate="fedgate", rounds=4, local_epochs=2, expert_epochs=20, gate_rounds=10)
    model, ext, info = train_nmoe(cl, cfg, tc, seed=0, dataset="digits")
    own = evaluate_per_client(model, cl)
    glob = evaluate_per_client(model, cl, x_global=ds.x_test, y_global=ds.y_test)
    assert own["accuracy"] > 0.3 and glob["accuracy"] > 0.3  # chance is 0.1
    assert len(info["participants"]) == 10 and all(len(p) == 4 for p in info["participants"])  # round(0.7*5)=4
    assert 0.0 <= local_ratio(model, cl) <= 1.0
    # rollgate and rangate reuse the stage-1 extractor
    for gate in ("rollgate", "rangate"):
        m, _, _ = train_nmoe(cl, cfg, replace(tc, gate=gate, gate_rounds=3), seed=0, extractor=ext)
        assert evaluate_per_client(m, cl, x_global=ds.x_test, y_global=ds.y_test)["accuracy"] > 0.15


def test_fedsc_with_dp_runs_and_is_deterministic(digits_clients) -> None:  # noqa: ANN001
    ds, cl, cfg = digits_clients
    tc = NMoETrainConfig(extractor="fedsc", gate="fedgate", rounds=1, local_epochs=1, expert_epochs=5, gate_rounds=2, dp_epsilon=1.0)
    m1, e1, _ = train_nmoe(cl, cfg, tc, seed=3, dataset="digits")
    m2, e2, _ = train_nmoe(cl, cfg, tc, seed=3, dataset="digits")
    assert all(torch.equal(e1.backbone[k], e2.backbone[k]) for k in e1.backbone)
    assert math.isfinite(e1.history[0]["loss"])
    x = ds.x_test[:20]
    assert torch.equal(m1(x), m2(x))


def test_routing_masks_restrict_experts() -> None:
    import torch.nn as nn

    from fedsim.learning.nmoe_model import NMoEModel

    mask = torch.tensor([False, True, False, True])
    idx, _ = RanGate(4).route(1000, 2, torch.Generator().manual_seed(10), mask)
    assert set(idx.reshape(-1).tolist()) == {1, 3}
    cfg = MoEConfig((4,), 3, backbone="mlp", widths=(4,), feature_dim=4, num_experts=4, top_k=2, expert_hidden=4)
    from fedsim.learning.models import Expert
    from fedsim.learning.training import init_state

    bb = {k[len("backbone."):]: v for k, v in init_state(replace(cfg, num_experts=1, top_k=1), 0).items() if k.startswith("backbone.")}
    experts = [Expert(cfg).state_dict() for _ in range(4)]
    m = NMoEModel(cfg, bb, gate_module(cfg, 4), experts, top_k=2)
    h = torch.randn(50, 4, generator=torch.Generator().manual_seed(11))
    idx, w = m.route(h, torch.tensor([True, False, False, False]))
    assert idx.shape == (50, 1) and torch.all(idx == 0) and torch.allclose(w, torch.ones_like(w))
    assert isinstance(m.gate, nn.Sequential)
