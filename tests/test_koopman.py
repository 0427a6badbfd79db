"""KLD regularizer against known linear dynamics, hand-written numpy, and closed-form Lyapunov values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pae.errors import PaeError
from pae.evolution.koopman import KoopmanLyapunov


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seed the modules' own inits (U); one thread, since these matrices are far too small to split."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _set(
    m: KoopmanLyapunov, U: torch.Tensor | None = None, K: torch.Tensor | None = None, L: torch.Tensor | None = None
) -> KoopmanLyapunov:
    """Write U (d, k; z = P U), K and L into an unconstrained module."""
    with torch.no_grad():
        if U is not None:
            m.lifts[0].weight.copy_(U.T)
        if K is not None:
            m.K.copy_(K)
        if L is not None:
            m.L.copy_(L)
    return m


def _linear_chain(maps: list[torch.Tensor], tokens: int, seed: int = 0) -> torch.Tensor:
    """Prompts P_{l+1} = P_l A_l from a random P_1: a trajectory whose Koopman operator is known."""
    P = [torch.randn(tokens, maps[0].shape[0], generator=torch.Generator().manual_seed(seed))]
    for A in maps:
        P.append(P[-1] @ A)
    return torch.stack(P)


def _contraction(d: int, scale: float, seed: int) -> torch.Tensor:
    """scale * a random rotation: every singular value is ``scale``."""
    return scale * torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))[0]


def _fit_K(m: KoopmanLyapunov, traj: torch.Tensor, steps: int = 400) -> float:
    """Adam on the Koopman loss with U frozen; returns the final loss."""
    m.lifts[0].requires_grad_(False)
    opt = torch.optim.Adam([m.K], lr=0.02)
    for _ in range(steps):
        loss = m(traj)["koopman"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


@pytest.mark.parametrize("basis", ["identity", "random"])
def test_learned_K_is_the_generating_map_in_the_U_basis(basis):
    d = 16
    A = _contraction(d, 0.9, seed=1)
    traj = _linear_chain([A] * 5, tokens=8)
    g = torch.Generator().manual_seed(2)
    U = (
        torch.eye(d)
        if basis == "identity"
        else torch.linalg.qr(torch.randn(d, d, generator=g))[0] @ torch.diag(torch.linspace(0.5, 1.5, d))
    )
    m = _set(KoopmanLyapunov(d, d), U=U)
    _fit_K(m, traj)
    # z_{l+1} = P_l A U = z_l (U^-1 A U): in the U basis the operator is U^-1 A U (A itself when U = I).
    target = torch.linalg.solve(U, A @ U)
    assert (torch.eye(d) - target).norm() > 3.0  # the identity init is far from the answer
    assert (m.K.detach() - target).norm() < (1e-2 if basis == "identity" else 5e-2)


def test_layerwise_fits_one_map_per_transition_where_global_cannot():
    d = 8
    maps = [_contraction(d, s, seed=i) for i, s in enumerate([0.9, 0.6, 0.95])]
    traj = _linear_chain(maps, tokens=12)
    layerwise = _set(KoopmanLyapunov(d, d, transitions=3, mode="layerwise"), U=torch.eye(d))
    shared = _set(KoopmanLyapunov(d, d), U=torch.eye(d))
    assert _fit_K(layerwise, traj) < 1e-5
    assert _fit_K(shared, traj) > 1e-2
    for K, A in zip(layerwise.K.detach(), maps):
        assert (K - A).norm() < 2e-2


def _numpy_losses(P, U, K, L, target: str) -> tuple[float, float]:
    """L_kp and the hinge L_stab, written out token by token."""
    z = P @ U
    kp = stab = 0.0
    for layer in range(len(P) - 1):
        Kl, Ll = (K[layer], L[layer]) if K.ndim == 3 else (K, L)
        pred = z[layer] @ Kl
        kp += np.mean((pred - z[layer + 1]) ** 2)
        Q = Ll.T @ Ll
        nxt = pred if target == "prediction" else z[layer + 1]
        stab += np.mean([max(0.0, nxt[t] @ Q @ nxt[t] - z[layer][t] @ Q @ z[layer][t]) for t in range(len(P[layer]))])
    return kp, stab


@pytest.mark.parametrize("mode", ["global", "layerwise"])
@pytest.mark.parametrize("target", ["prediction", "next"])
def test_losses_match_numpy(mode, target):
    rng = np.random.default_rng(0)
    L_, p, d, k = 5, 3, 6, 4
    shape = (L_ - 1, k, k) if mode == "layerwise" else (k, k)
    P, U = rng.normal(size=(L_, p, d)), rng.normal(size=(d, k)) / 2
    K, Lm = rng.normal(size=shape) / 2 + np.eye(k), rng.normal(size=shape) / 2 + np.eye(k)
    m = KoopmanLyapunov(d, k, transitions=L_ - 1, mode=mode, lyapunov_target=target)
    _set(m, *(torch.tensor(x, dtype=torch.float32) for x in (U, K, Lm)))
    out = m(torch.tensor(P, dtype=torch.float32))
    kp, stab = _numpy_losses(P, U, K, Lm, target)
    assert stab > 0  # the hinge is active somewhere, so the comparison means something
    assert out["koopman"].item() == pytest.approx(kp, rel=1e-5)
    assert out["lyapunov"].item() == pytest.approx(stab, rel=1e-5)


@pytest.mark.parametrize("target", ["prediction", "next"])
def test_hinge_is_zero_for_contraction_and_grows_with_expansion(target):
    d = 6
    z0 = torch.randn(4, d, generator=torch.Generator().manual_seed(0))
    values = {}
    for scale in (0.5, 2.0):
        # Under "prediction" K drives the step; under "next" the trajectory itself does (K stays at I).
        traj = _linear_chain([scale * torch.eye(d)] * 3, tokens=4) if target == "next" else z0.expand(4, -1, -1)
        m = _set(
            KoopmanLyapunov(d, d, lyapunov_target=target),
            U=torch.eye(d),
            K=scale * torch.eye(d) if target == "prediction" else None,
        )
        values[scale] = (m(traj)["lyapunov"].item(), traj)
    assert values[0.5][0] == 0.0
    # Q = I: V(2 z) - V(z) = 3 ||z||^2 per token, summed over the transitions' token means.
    z_from = values[2.0][1][:-1]
    assert values[2.0][0] == pytest.approx(3 * z_from.pow(2).sum(-1).mean(-1).sum().item(), rel=1e-5)


def _official(scale: float, tokens: torch.Tensor, L: torch.Tensor | None = None) -> float:
    m = _set(KoopmanLyapunov(2, 2, lyapunov_form="official"), U=torch.eye(2), K=scale * torch.eye(2), L=L)
    return m(tokens.expand(2, -1, -1))["lyapunov"].item()


def test_official_form_matches_its_closed_form():
    # Two tokens of norm 0.5, Q = I, U = I (the 1e-8 guards are below fp32 resolution at these values).
    # K = 0.5 I: no clamp, dV = 0.25 * 0.25 - 0.25 = -0.1875 per token.
    # K = 2 I: 2z has norm 1, on the clamp's edge, dV = 1 - 0.25 = 0.75 per token.
    z = torch.tensor([[0.3, 0.4], [0.0, 0.5]])

    def sp(x: float) -> float:
        return math.log1p(math.exp(x))

    expected = {0.5: 10 * math.tanh(sp(-0.1875) / 10), 2.0: 10 * math.tanh(sp(0.75) / 10)}
    got = {s: _official(s, z) for s in expected}
    for s in expected:
        assert got[s] == pytest.approx(expected[s], rel=1e-6)
    assert 0 < got[0.5] < math.log(2) < got[2.0]  # softplus never reaches 0; a contraction scores below ln 2
    # The spectral normalisation makes the scale of Q irrelevant (the hinge would grow 4x with L = 2 I).
    assert _official(2.0, z, L=2 * torch.eye(2)) == pytest.approx(got[2.0], rel=1e-6)


def test_official_form_cannot_see_scale_outside_the_unit_ball():
    # Tokens of norm 5: the clamp maps z, 0.5 z (norm 2.5) and 2 z (norm 10) onto the same unit vector, so
    # dV = 0 and both a contraction and an expansion score exactly 10 tanh(ln 2 / 10).
    z = torch.tensor([[3.0, 4.0], [0.0, 5.0]])
    blind = 10 * math.tanh(math.log(2) / 10)
    assert _official(0.5, z) == pytest.approx(blind, rel=1e-6)
    assert _official(2.0, z) == pytest.approx(blind, rel=1e-6)


def test_parameter_counts():
    d, k, T = 12, 5, 4

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(KoopmanLyapunov(d, k)) == d * k + 2 * k * k
    assert count(KoopmanLyapunov(d, k, transitions=T, mode="layerwise")) == d * k + 2 * T * k * k
    assert count(KoopmanLyapunov(d, k, norm_preserving=True)) == d * k + 2 * k * k


@pytest.mark.parametrize("form", ["hinge", "official"])
def test_gradients_reach_prompts_lift_K_and_L(form):
    d, k = 8, 6
    traj = torch.randn(4, 3, d).requires_grad_()
    m = KoopmanLyapunov(d, k, lyapunov_form=form)
    _set(m, K=1.5 * torch.eye(k))  # an expansive K, so the hinge is active at every token
    out = m(traj)
    out["koopman"].backward(retain_graph=True)
    assert m.L.grad is None  # the Koopman term does not involve the energy
    out["lyapunov"].backward()
    for grad in (traj.grad, m.lifts[0].weight.grad, m.K.grad, m.L.grad):
        assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["global", "layerwise"])
def test_single_layer_trajectory_gives_zeros(mode):
    m = KoopmanLyapunov(8, 4, transitions=2, mode=mode)
    traj = torch.randn(1, 3, 8, requires_grad=True)
    out = m(traj)
    assert out["koopman"].item() == 0.0 and out["lyapunov"].item() == 0.0
    (out["koopman"] + out["lyapunov"]).backward()
    assert torch.equal(traj.grad, torch.zeros_like(traj))


def test_spectral_radius_matches_numpy():
    rng = np.random.default_rng(0)
    Ks = rng.normal(size=(3, 5, 5))
    shared = _set(KoopmanLyapunov(4, 5), K=torch.tensor(Ks[0], dtype=torch.float32))
    assert shared.spectral_radius() == pytest.approx(np.abs(np.linalg.eigvals(Ks[0])).max(), rel=1e-5)
    layerwise = _set(KoopmanLyapunov(4, 5, transitions=3, mode="layerwise"), K=torch.tensor(Ks, dtype=torch.float32))
    radii = np.abs(np.linalg.eigvals(Ks)).max(-1)
    diag = layerwise.diagnostics(torch.randn(4, 2, 4))
    assert layerwise.spectral_radius() == pytest.approx(radii.max(), rel=1e-5)
    assert [diag[f"koopman_spectral_radius_t{i}"] for i in range(3)] == pytest.approx(radii.tolist(), rel=1e-5)
    assert diag["koopman_lift_norm"] == pytest.approx(
        np.linalg.norm(layerwise.lifts[0].weight.detach().numpy()), rel=1e-6
    )
    assert diag["koopman_lift_gain"] > 0


def test_diverged_K_reports_nan_instead_of_aborting():
    m = _set(KoopmanLyapunov(4, 3), K=torch.full((3, 3), float("nan")))
    assert math.isnan(m.diagnostics()["koopman_spectral_radius"])


def _minimise_regularizer(m: KoopmanLyapunov, traj: torch.Tensor, steps: int) -> None:
    """SGD with weight decay on L_kp + L_stab alone: nothing in the loss asks U to keep the prompts visible."""
    opt = torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=1e-2)
    for _ in range(steps):
        out = m(traj)
        opt.zero_grad()
        (out["koopman"] + out["lyapunov"]).backward()
        opt.step()


def test_unconstrained_lift_collapses_and_norm_preserving_does_not():
    d, k = 16, 8
    traj = torch.randn(6, 4, d, generator=torch.Generator().manual_seed(0))  # not linear: L_kp > 0 unless U = 0
    free, fixed = KoopmanLyapunov(d, k), KoopmanLyapunov(d, k, norm_preserving=True)
    start = free.lift_norm(), fixed.lift_norm()
    assert start[1] == pytest.approx(math.sqrt(k), rel=1e-5)
    for m in (free, fixed):
        _minimise_regularizer(m, traj, steps=500)
    assert free.lift_norm() < 0.1 * start[0]
    assert fixed.lift_norm() == pytest.approx(start[1], rel=1e-5)
    w = fixed.lifts[0].weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(k), atol=1e-5)


def test_norm_preserving_lift_can_still_rotate_out_of_a_low_rank_chain_unless_k_covers_d():
    # The prompts span 2 of 16 dimensions. With k = 8 < d the orthonormal columns can leave that span
    # (||U|| fixed, lift gain -> 0); with k = d, U U^T = I makes the lift an isometry (gain stays 1).
    d = 16
    g = torch.Generator().manual_seed(0)
    traj = torch.randn(6, 4, 2, generator=g) @ torch.randn(2, d, generator=g) / 4
    narrow, full = KoopmanLyapunov(d, 8, norm_preserving=True), KoopmanLyapunov(d, d, norm_preserving=True)
    start = narrow.lift_gain(traj)
    for m in (narrow, full):
        _minimise_regularizer(m, traj, steps=300)
    assert narrow.lift_gain(traj) < 0.1 * start
    assert narrow.lift_norm() == pytest.approx(math.sqrt(8), rel=1e-5)
    assert full.lift_gain(traj) == pytest.approx(1.0, rel=1e-5)


def test_bf16_autocast_computes_in_fp32():
    m = KoopmanLyapunov(8, 4)
    _set(m, K=1.5 * torch.eye(4))
    traj = torch.randn(3, 2, 8)
    ref = m(traj)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(traj)
    for key in ref:
        assert out[key].dtype == torch.float32 and out[key].item() == pytest.approx(ref[key].item(), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="shared"), "unknown mode"),
        (dict(lyapunov_form="relu"), "unknown lyapunov_form"),
        (dict(lyapunov_target="z_next"), "unknown lyapunov_target"),
        (dict(koopman_dim=0), "koopman_dim=0"),
        (dict(mode="layerwise"), "transitions is not set"),
        (dict(transitions=-1), "negative"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(PaeError, match=match):
        KoopmanLyapunov(8, **kwargs)


@pytest.mark.parametrize("shape, match", [((4, 3, 7), r"widths \[8\]"), ((3, 8), "got"), ((5, 3, 8), "4 transitions")])
def test_bad_trajectory(shape, match):
    m = KoopmanLyapunov(8, 4, transitions=3, mode="layerwise")
    with pytest.raises(PaeError, match=match):
        m(torch.randn(shape))
