"""PAE's KLD regularizer: a Koopman operator over the prompt trajectory and a Lyapunov energy on it.

A deep prompt method's prompt sets form a chain P_1..P_L over depth (not over training steps). PAE lifts
each set to z_l = P_l U (row vectors; U is d x k) and asks one linear operator K to carry the chain,
z_{l+1} ~ z_l K (Koopman consistency, the paper's Eq. 8). A learned energy V(z) = z Q z^T with Q = L^T L
must not grow along that step (Lyapunov stability, Eq. 10). Gradients reach the prompts, U, K and L.
The choices the paper leaves open are constructor flags (research/methods.md §3.4 and §3.6). The defaults
are the official code's global operator and the original hinge penalty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from ..config.pae import KOOPMAN_MODES as MODES
from ..config.pae import LYAPUNOV_FORMS, LYAPUNOV_TARGETS
from ..errors import PaeError
from ..prompts.base import Trajectory, as_stages
from ..run_folder import KOOPMAN_LIFT_GAIN, KOOPMAN_LIFT_NORM, KOOPMAN_SPECTRAL_RADIUS


def skip_layers(trajectory: Trajectory, n: int) -> list[torch.Tensor]:
    """The stages without the first ``n`` prompt layers counted across stages (PAE's ``chain_start``)."""
    out = []
    for stage in as_stages(trajectory):
        drop = min(n, stage.shape[0])
        n -= drop
        if drop < stage.shape[0]:
            out.append(stage[drop:])
    return out


class KoopmanLyapunov(nn.Module):
    """The L_kp and L_stab terms of PAE's loss, for any prompt trajectory (L, p, d).

    - ``mode``: ``"global"`` shares one K and one L across all transitions (the paper's default).
      ``"layerwise"`` gives each of the ``transitions`` steps its own K_l and L_l (the ablation).
    - ``lyapunov_form``: ``"hinge"`` is mean_tokens relu(V(z') - V(z_l)) with V(z) = z Q z^T, as in
      the Sept-2025 code and the README. ``"official"`` adds the Feb-2026 code's normalisations: Q / ||Q||_2,
      a per-token clamp z / max(||z||, 1), softplus instead of relu, and 10 tanh(mean / 10).
    - ``lyapunov_target``: z' = z_l K (``"prediction"``, as in the code: this constrains K and U) or
      z' = z_{l+1} (``"next"``, as in the README: this constrains the prompts themselves).
    - ``norm_preserving``: a deliberate deviation from the paper. U = 0 minimises both terms, and weight
      decay pulls U there (methods.md §3.6 #5). With the flag, U is kept with orthonormal columns
      (orthonormal rows when k > d) through ``torch.nn.utils.parametrizations.orthogonal``. This fixes
      ||U||_F = sqrt(min(d, k)), and the lift can no longer shrink or inflate the prompts. Normalising U's
      columns instead would also fix the scale, but it would let every column drift to the same direction.
      With k < d this does not close every route: the chain spans at most L*p of the d dimensions, and U can
      rotate its k columns out of that span, so z -> 0 again. Watch ``lift_gain``, or take k >= d: U U^T = I
      then makes the lift an isometry, ||P U|| = ||P||.

    Stages of different widths (Swin: C, 2C, 4C, 8C) get one lift each, U_s (C_s x k), into one shared k-space
    where one K carries the whole chain, across stage boundaries too: z_l = P_l U_s(l). A ViT has one stage, so
    one U, as the paper. ``embed_dims`` names the widths, a stage each.

    U is ``lifts[s].weight.T`` (the official ``koopman_in``) and starts with nn.Linear's default uniform init;
    with ``norm_preserving`` that init is orthonormalised. K and L start at the identity. The
    official ``koopman_out`` appears in no loss and is left out.
    """

    def __init__(
        self,
        embed_dims: int | list[int],
        koopman_dim: int = 256,
        transitions: int | None = None,
        mode: str = "global",
        lyapunov_form: str = "hinge",
        lyapunov_target: str = "prediction",
        norm_preserving: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("mode", mode, MODES)
        _check_choice("lyapunov_form", lyapunov_form, LYAPUNOV_FORMS)
        _check_choice("lyapunov_target", lyapunov_target, LYAPUNOV_TARGETS)
        widths = [embed_dims] if isinstance(embed_dims, int) else list(embed_dims)
        if not widths or min(widths) < 1 or koopman_dim < 1:
            raise PaeError(
                f"embed_dims={embed_dims} and koopman_dim={koopman_dim} must all be at least 1.",
                "pass the backbone's embedding width and a positive Koopman dimension (the paper uses 256).",
            )
        if transitions is not None and transitions < 0:
            raise PaeError(f"transitions={transitions} is negative.", "pass the trajectory length minus one.")
        if mode == "layerwise" and not transitions:
            raise PaeError(
                "the layerwise Koopman mode needs one operator per transition, but transitions is not set.",
                "pass transitions = (number of prompt layers in the trajectory) - 1.",
            )
        self.embed_dims, self.transitions = widths, transitions
        self.mode, self.lyapunov_form, self.lyapunov_target = mode, lyapunov_form, lyapunov_target
        self.lifts = nn.ModuleList(nn.Linear(d, koopman_dim, bias=False) for d in widths)
        if norm_preserving:
            # Not the default Householder map for non-square U: it multiplies by int(diagonal), so weight decay's
            # first step (diagonal 1 -> 0.999) sets U to zero. matrix_exp has no such discrete part.
            for lift in self.lifts:
                orthogonal(lift, orthogonal_map="matrix_exp")
        shape = (transitions, koopman_dim, koopman_dim) if mode == "layerwise" else (koopman_dim, koopman_dim)
        self.K = nn.Parameter(torch.eye(koopman_dim).expand(shape).clone())
        self.L = nn.Parameter(torch.eye(koopman_dim).expand(shape).clone())

    def lifted(self, trajectory: Trajectory) -> torch.Tensor:
        """z (L, p, k): every prompt layer through its stage's lift, stages in order, in fp32."""
        stages = self._check(trajectory)
        with torch.autocast(stages[0].device.type, enabled=False):
            return torch.cat([lift(stage.float()) for lift, stage in zip(self.lifts, stages)])

    def forward(self, trajectory: Trajectory, lyapunov: bool = True) -> dict[str, torch.Tensor]:
        """Scalar ``koopman`` (L_kp) and, if asked, ``lyapunov`` (L_stab) terms, each summed over the transitions."""
        stages = self._check(trajectory)
        if sum(s.shape[0] for s in stages) < 2:
            zero = stages[0].sum() * 0.0  # a shallow method has no chain; a zero that backward() accepts
            return {"koopman": zero, "lyapunov": zero} if lyapunov else {"koopman": zero}
        # The regularizer is tiny next to the ViT: fp32 keeps the small differences z_l K - z_{l+1} out of bf16
        # rounding.
        with torch.autocast(stages[0].device.type, enabled=False):
            z = self.lifted(stages)
            pred = z[:-1] @ self.K
            terms = {
                "koopman": (pred - z[1:]).pow(2).mean(dim=(1, 2)).sum()
            }  # the code's MSE over p*k, summed over pairs
            if lyapunov:
                target = pred if self.lyapunov_target == "prediction" else z[1:]
                terms["lyapunov"] = self._lyapunov(z[:-1], target).sum()
        return terms

    def _lyapunov(self, z: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        """Per-transition penalty (T,) on growth of the energy V from z_l to z_next."""
        q = self.L.mT @ self.L
        if self.lyapunov_form == "hinge":
            return F.relu(_energy(z_next, q) - _energy(z, q)).mean(-1)
        # The SVD refuses non-finite input; a diverged step must reach the loop's divergence check as a nan loss.
        q = q / (torch.linalg.matrix_norm(torch.nan_to_num(q), ord=2, keepdim=True) + 1e-8)
        delta = _energy(_clamp_norm(z_next), q) - _energy(_clamp_norm(z), q)
        return 10.0 * torch.tanh(F.softplus(delta).mean(-1) / 10.0)

    def _check(self, trajectory: Trajectory) -> list[torch.Tensor]:
        stages = as_stages(trajectory)
        shapes = [tuple(s.shape) for s in stages]
        if len(stages) != len(self.embed_dims) or any(
            s.ndim != 3 or s.shape[-1] != d for s, d in zip(stages, self.embed_dims)
        ):
            raise PaeError(
                f"a prompt trajectory must be a stage each of widths {self.embed_dims}, (layers, prompts, width); "
                f"got {shapes}.",
                "pass PromptMethod.trajectory() of a method built on the same backbone.",
            )
        steps = sum(s.shape[0] for s in stages) - 1
        if steps >= 1 and self.transitions is not None and steps != self.transitions:
            raise PaeError(
                f"the trajectory has {steps} transitions but the regularizer was built for {self.transitions}.",
                "build KoopmanLyapunov with transitions = trajectory.shape[0] - 1.",
            )
        return stages

    @torch.no_grad()
    def spectral_radius(self) -> float:
        """max |eigenvalue| of K (of every K_l in layerwise mode). Above 1, the lifted chain can grow with depth."""
        return self._radii().max().item()

    @torch.no_grad()
    def lift_norm(self) -> float:
        """||U||_F over every stage's lift: the collapse to U = 0 that makes both terms trivially zero shows up here."""
        return torch.stack([lift.weight.norm() for lift in self.lifts]).norm().item()

    @torch.no_grad()
    def lift_gain(self, trajectory: Trajectory) -> float:
        """||P U||_F / ||P||_F: the scale of the lifted chain. It tends to 0 under collapse, even with ||U|| fixed."""
        stages = [s.detach() for s in as_stages(trajectory)]
        norm = torch.stack([s.float().norm() for s in stages]).norm()
        return (self.lifted(stages).norm() / norm.clamp_min(1e-12)).item()

    @torch.no_grad()
    def diagnostics(self, trajectory: Trajectory | None = None) -> dict[str, float]:
        """Per-epoch monitors for MLflow: spectral radius, ||U||, the per-transition radii (layerwise), the lift
        gain."""
        radii = self._radii()
        out = {KOOPMAN_SPECTRAL_RADIUS: radii.max().item(), KOOPMAN_LIFT_NORM: self.lift_norm()}
        if self.mode == "layerwise":
            out.update({f"{KOOPMAN_SPECTRAL_RADIUS}_t{i}": r for i, r in enumerate(radii.tolist())})
        if trajectory is not None:
            out[KOOPMAN_LIFT_GAIN] = self.lift_gain(trajectory)
        return out

    def _radii(self) -> torch.Tensor:
        # Eigenvalues on the CPU in float64, as the official code does: cheap at k=256 and free of GPU eig backends.
        k = self.K.detach().to("cpu", torch.float64).reshape(-1, *self.K.shape[-2:])
        if not torch.isfinite(k).all():  # a diverged run: LAPACK aborts the process on NaN input instead of raising
            return torch.full(k.shape[:1], float("nan"), dtype=k.dtype)
        return torch.linalg.eigvals(k).abs().amax(-1)


def _energy(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """V(z) = z Q z^T for each token (row) of z."""
    return ((z @ q) * z).sum(-1)


def _clamp_norm(z: torch.Tensor) -> torch.Tensor:
    """Scale tokens with norm above 1 back to the unit sphere, as the official code does (the 1e-8 included)."""
    return z / (z.norm(dim=-1, keepdim=True) + 1e-8).clamp(min=1.0)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PaeError(f"unknown {name} '{value}'.", f"use one of: {', '.join(choices)}.")
