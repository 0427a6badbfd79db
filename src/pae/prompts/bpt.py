"""BPT (Wang, Duan, Kong, ICCV 2025): prompts generated as A @ B^T to tame the "burstiness" of attention.

A prompt row p meets the data in attention through p W_q W_k^T x^T. BPT whitens those statistics:
with X~ = W_q W_k^T X^T over patch tokens of a few training images, Sigma = X~ X~^T / N and the ZCA
matrix W = Sigma^{-1/2}, the prompts are

- ``fwhiten``: P~ = P W^T with P learnable and W fixed;
- ``twhiten``: the same with W learnable too;
- ``bilinear``: P~ = A B^T, A (p, r) ~ N(0, 0.02), B (d, r) Xavier or r random columns of W (low rank).

All three are one formula, prompts = A B^T (B = W for the whitening variants). The official code
builds it with a 1x1 conv over a sqrt(p) x sqrt(p) grid, so p must be a perfect square there; a
matrix product has no such limit. Deviations, deliberate: W_q, W_k and X are the block's own (layer
l's for deep), X is the block's LayerNorm-ed input tokens, and every token is a column of X~ (the
official code averages over images first, which leaves Sigma with rank <= number of patches).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..errors import PaeError
from ..methods.bpt import B_INITS, VARIANTS
from .base import LayerPrompts, check_initial_prompts, embed_tokens, fused_qkv


class BPT(LayerPrompts):
    """Prompts A_l B_l^T per layer; ``variant`` picks what B is (module docstring)."""

    def __init__(
        self,
        depth: int,
        embed_dim: int,
        num_tokens: int,
        deep: bool,
        variant: str = "bilinear",
        rank: int = 32,
        b_init: str = "xavier",
        whitening: str = "per_token",
        columns: str = "shared",
        whiten_eps: float = 1e-4,
        dropout: float = 0.0,
        mask: str = "image",
        fit_images: int = 100,
    ) -> None:
        if variant not in VARIANTS:
            raise PaeError(f"unknown BPT variant '{variant}'.", f"use one of: {', '.join(VARIANTS)}.")
        if b_init not in B_INITS or b_init == "official":
            raise PaeError(f"unknown BPT B init '{b_init}'.", f"use one of: {', '.join(B_INITS)}.")
        if variant == "bilinear" and not 1 <= rank <= embed_dim:
            raise PaeError(
                f"BPT's bilinear rank must be in [1, {embed_dim}], got {rank}.", "set bpt_rank in that range."
            )
        super().__init__(depth if deep else 1, num_tokens, dropout, mask)
        self.variant, self.whitening, self.columns, self.whiten_eps = variant, whitening, columns, whiten_eps
        self.needs_whitening = variant != "bilinear" or b_init == "whitening"
        self.fit_images = fit_images if self.needs_whitening else 0
        r = rank if variant == "bilinear" else embed_dim
        self.a = nn.Parameter(torch.empty(self.num_layers, num_tokens, r).normal_(0.0, 0.02))
        if variant == "bilinear":
            bound = (6.0 / (embed_dim + r)) ** 0.5
            b = torch.empty(self.num_layers, embed_dim, r).uniform_(-bound, bound)
        else:  # the identity until fit_to_data computes W
            b = torch.eye(embed_dim).repeat(self.num_layers, 1, 1)
        if variant == "fwhiten":
            self.register_buffer("b", b)
        else:
            self.b = nn.Parameter(b)

    def prompt_set(self, layer: int) -> torch.Tensor:
        return self.a[layer] @ self.b[layer].T

    def trajectory(self) -> torch.Tensor:
        return self.a @ self.b.transpose(1, 2)

    @torch.no_grad()
    def fit_to_data(self, backbone: nn.Module, images: torch.Tensor) -> None:
        """Write each prompted block's whitening matrix (or r random columns of it) into B."""
        if not self.needs_whitening:
            return
        for layer, (block, tokens) in enumerate(block_inputs(backbone, images)):
            if layer == self.num_layers:
                break
            w = whitening_matrix(block, tokens, self.whitening, self.whiten_eps)
            if self.variant == "bilinear":
                w = draw_columns(w, self.b.shape[2], self.columns)
            self.b[layer].copy_(w.to(self.b.dtype))

    @torch.no_grad()
    def initialize(self, prompts: torch.Tensor) -> None:
        """Make A B^T = P as closely as the variant allows.

        Whitening variants keep their full-rank W and solve for A (exact). Bilinear replaces both factors by
        the best rank-r fit, the truncated SVD P = U S V^T -> A = U_r S_r, B = V_r (exact when p <= r): solving
        for A alone against a random B would keep only about r/d of the initial prompts' energy.
        """
        check_initial_prompts(prompts, torch.Size((self.num_layers, self.num_tokens, self.b.shape[1])))
        target = prompts[: self.num_layers].to(self.b.device, torch.float64)
        if self.variant != "bilinear":
            solution = torch.linalg.lstsq(self.b.double(), target.transpose(1, 2)).solution
            self.a.copy_(solution.transpose(1, 2).to(self.a.dtype))
            return
        u, s, vh = torch.linalg.svd(target, full_matrices=False)  # (L, p, m), (L, m), (L, m, d) with m = min(p, d)
        r, m = self.a.shape[2], s.shape[1]
        a, b = torch.zeros_like(self.a, dtype=torch.float64), torch.zeros_like(self.b, dtype=torch.float64)
        k = min(r, m)
        a[:, :, :k] = u[:, :, :k] * s[:, None, :k]
        b[:, :, :k] = vh[:, :k].transpose(1, 2)
        if k < r:  # unused rank: B's spare columns stay small and random so they can still learn
            b[:, :, k:] = self.b[:, :, k:].double()
        self.a.copy_(a.to(self.a.dtype))
        self.b.copy_(b.to(self.b.dtype))

    def per_layer_parameters(self) -> list[nn.Parameter]:
        return [self.a, self.b] if isinstance(self.b, nn.Parameter) else [self.a]


@torch.no_grad()
def block_inputs(backbone: nn.Module, images: torch.Tensor) -> Iterator[tuple[nn.Module, torch.Tensor]]:
    """Each block with its input patch tokens (B, N, d) (prefix dropped), from a prompt-free forward of ``backbone``."""
    x = embed_tokens(backbone, images)
    for block in backbone.blocks:
        yield block, x[:, backbone.num_prefix_tokens :]
        x = block(x)


@torch.no_grad()
def whitening_matrix(
    block: nn.Module, tokens: torch.Tensor, form: str = "per_token", eps: float = 1e-4
) -> torch.Tensor:
    """ZCA W = Sigma^{-1/2} of the q/k statistics of the block's LayerNorm-ed input tokens (B, N, d), in float64.

    ``per_token`` (the paper's formula, row convention q = x W_q): X~ = W_q W_k^T x^T with every token a column,
    Sigma = X~ X~^T / (B N), and a ridge ``eps`` relative to Sigma's largest eigenvalue bounding the gain of
    near-null directions. ``image_mean`` (the official code): X~ = q k^T x^T with q, k the rows of qkv.weight as
    stored, averaged over the images first (so Sigma has rank <= N), Sigma = X~ X~^T / d, and no ridge; its float32
    SVD never returns an exact zero, so eigenvalues are floored at float32's resolution of the largest (without the
    floor the gain of the null directions is infinite).
    """
    x = block.norm1(tokens).double()
    d = x.shape[-1]
    weight = fused_qkv(block.attn).weight.double()  # (3d, d): q = x @ weight[:d].T
    if form == "per_token":
        flat = x.flatten(0, 1)
        xt = weight[:d].T @ (weight[d : 2 * d] @ flat.T)  # W_q W_k^T x^T, (d, B N)
        sigma = xt @ xt.T / xt.shape[1]
        floor = eps
    else:
        xt = (weight[:d] @ weight[d : 2 * d].T @ x.transpose(1, 2)).mean(0)  # q k^T x^T averaged over images, (d, N)
        sigma = xt @ xt.T / d
        floor = torch.finfo(torch.float32).eps
    s, u = torch.linalg.eigh(sigma)
    s = s.clamp_min(0.0) + floor * s.max()
    return (u * s.rsqrt()) @ u.T


def draw_columns(w: torch.Tensor, r: int, how: str) -> torch.Tensor:
    """r random columns of W (d, d) for B (d, r): ``shared`` takes the same r columns for every row, ``per_row``
    gathers each row's own r columns (the official code: gather(W, 1, argsort(rand(d, d), 1)[:, :r]))."""
    d = w.shape[1]
    if how == "shared":
        return w[:, torch.randperm(d)[:r].to(w.device)]
    return torch.gather(w, 1, torch.argsort(torch.rand(d, d), dim=1)[:, :r].to(w.device))
