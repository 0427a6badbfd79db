"""The seam between a frozen timm ViT and any prompt method.

``PromptedViT`` runs timm's own ``patch_embed``, ``_pos_embed``, ``blocks`` and ``norm`` and asks the
method, before every block, for prompt tokens. The first tokens a method returns are inserted after
the prefix tokens ([CLS]); tokens returned for a later block replace the prompt positions (VPT-deep).
Returning ``None`` carries the prompt outputs on (VPT-shallow); the outputs at the prompt positions are
handed to the method, so it can also mix them in (iVPT). A method may edit the tokens before a block
(iVPT's attentive reinforcement) and give extra keys and values for a block's attention (E2VPT), run
through timm's own block weights. Zero prompt tokens reproduce timm's forward exactly. Prompts get no
position embedding, as in VPT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PaeError
from .kv_attention import block_with_kv


def embed_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """timm's token embedding (B, prefix + N, d): patches, position embedding, norm_pre; prompts go in after it."""
    return backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(images))))


Trajectory = torch.Tensor | list[torch.Tensor]  # (L, p, d), or per stage (L_s, p, C_s) on a Swin


def as_stages(trajectory: Trajectory) -> list[torch.Tensor]:
    """A trajectory as its stages: a ViT's (L, p, d) is one stage."""
    return [trajectory] if isinstance(trajectory, torch.Tensor) else list(trajectory)


def fused_qkv(attn: nn.Module) -> nn.Linear:
    """The block's fused qkv projection, which BPT's whitening and iVPT's [CLS] attention read."""
    if not isinstance(getattr(attn, "qkv", None), nn.Linear):
        raise PaeError(
            f"this method reads a fused qkv projection; {type(attn).__name__} has none.",
            "use a timm ViT with the standard Attention module (e.g. the DINOv2 or orig_in21k ViTs).",
        )
    return attn.qkv


def dims(backbone: nn.Module) -> tuple[int, int, int]:
    """(depth, embedding width, patch size) of a timm ViT: what a method sizes its prompts by."""
    return len(backbone.blocks), backbone.embed_dim, backbone.patch_embed.patch_size[0]


class PromptMethod(nn.Module):
    """A prompt-tuning method: owns its learnable prompts; PAE sees it only through this interface."""

    num_tokens: int = 0
    fit_images: int = 0  # training images ``fit_to_data`` needs (0: it needs none)

    def prompts(self, layer: int, batch: int, previous: torch.Tensor | None = None) -> torch.Tensor | None:
        """Input prompt tokens (batch, p, d) for block ``layer``, or None to leave the sequence as it is.

        ``previous`` holds the tokens now at the prompt positions (the last block's outputs there), None before
        the first prompts are inserted.
        """
        return None

    def fit_to_data(self, backbone: nn.Module, images: torch.Tensor) -> None:
        """Data-dependent set-up before training, from normalised training images (BPT's whitening); default none."""

    def adjust_tokens(
        self, layer: int, block: nn.Module, x: torch.Tensor, n_prefix: int, n_prompt: int
    ) -> torch.Tensor:
        """Edit the token sequence (B, n_prefix + n_prompt + N, d) just before block ``layer`` (iVPT); default none."""
        return x

    def kv_prompts(self, layer: int, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Extra keys and values (batch, heads, n, head_dim) for block ``layer``'s attention (E2VPT), or None."""
        return None

    def trajectory(self) -> Trajectory:
        """Prompt states across depth (L, p, d) (per stage on a Swin), the chain PAE's Koopman operator constrains."""
        raise NotImplementedError(f"{type(self).__name__} has no prompt trajectory")

    def initialize(self, prompts: Trajectory) -> None:
        """Write task-aware initial prompts shaped as ``trajectory()`` (PAE), replacing the method's own init."""
        raise NotImplementedError(f"{type(self).__name__} has no prompts to initialize")

    def per_layer_parameters(self) -> list[nn.Parameter]:
        """The trainable tensors whose first dimension indexes layers (the gradient diagnostics read these)."""
        return []

    def layer_grad_norms(self) -> torch.Tensor:
        """L2 norm of the prompt gradient per layer (L,), over all per-layer tensors; empty if none."""
        params = self.per_layer_parameters()
        if not params:
            return torch.zeros(0)
        squares = torch.zeros(params[0].shape[0], device=params[0].device)
        for p in params:
            if p.grad is not None:
                squares = squares + p.grad.flatten(1).float().pow(2).sum(1)
        return squares.sqrt()


class LayerPrompts(PromptMethod):
    """A method with one (p, d) prompt set per layer, L = depth (deep) or 1 (shallow), with prompt dropout."""

    def __init__(self, num_layers: int, num_tokens: int, dropout: float, mask: str = "image") -> None:
        super().__init__()
        if mask not in ("image", "batch", "deep_batch"):
            raise ValueError(f"prompt dropout mask must be 'image', 'batch' or 'deep_batch', got {mask!r}")
        self.num_layers = num_layers
        self.num_tokens = num_tokens
        self.dropout = nn.Dropout(dropout)
        self.mask = mask

    def prompt_set(self, layer: int) -> torch.Tensor:
        """The (p, d) prompts of ``layer`` before dropout."""
        raise NotImplementedError

    def prompts(self, layer: int, batch: int, previous: torch.Tensor | None = None) -> torch.Tensor | None:
        if layer >= self.num_layers or self.num_tokens == 0:
            return None
        prompts = self.prompt_set(layer).unsqueeze(0)
        if self.mask == "batch" or (self.mask == "deep_batch" and layer > 0):
            return self.dropout(prompts).expand(batch, -1, -1)  # drop, then expand: one mask for the whole batch
        return self.dropout(prompts.expand(batch, -1, -1))  # expand, then drop: a mask per image, as VPT's ViT code


class PromptedModel(nn.Module):
    """Frozen backbone + prompt method + linear head: what every family shares (the head, freezing, eval mode)."""

    readouts: tuple[str, ...] = ()  # what its head can read (pae.backbones.catalogue.READOUTS), the default first

    def __init__(
        self,
        backbone: nn.Module,
        method: PromptMethod,
        num_classes: int,
        train_backbone: bool = False,
        head_init: str = "kaiming_fan_out",
        readout: str | None = None,
    ) -> None:
        super().__init__()
        readout = readout or self.readouts[0]
        if readout not in self.readouts:
            raise PaeError(
                f"readout '{readout}' does not apply to a {type(self).__name__}.",
                f"use readout official or one of: {', '.join(self.readouts)}.",
            )
        self.pool = readout
        self.backbone = backbone
        self.method = method
        self.train_backbone = train_backbone
        backbone.requires_grad_(train_backbone)
        self.head = nn.Linear(backbone.num_features, num_classes)
        init_head(self.head.weight, head_init)
        nn.init.zeros_(self.head.bias)  # VPT's constant -log(99) bias is irrelevant under softmax (and not decayed)

    def train(self, mode: bool = True) -> PromptedModel:
        """The backbone stays in eval mode (VPT does the same): only prompt dropout is stochastic."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # What MPA needs of a family (pae.evolution.task_init): the first prompts' space and how prompts pass the blocks.
    @staticmethod
    def layer_widths(backbone: nn.Module) -> list[int]:
        """The width of every promptable block's prompts, blocks in order."""
        raise NotImplementedError

    @staticmethod
    def patch_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(B, N, C) patch tokens where the first prompts go in, prefix tokens dropped."""
        raise NotImplementedError

    @staticmethod
    def propagate_prompts(backbone: nn.Module, first: torch.Tensor) -> Trajectory:
        """(p, C) prompts before the first block -> the prompt-only sequence's input to every block."""
        raise NotImplementedError

    def readout(self, features: torch.Tensor) -> torch.Tensor:
        """The (B, d) vector the head reads from ``forward_features``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.readout(self.forward_features(x)))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class PromptedViT(PromptedModel):
    """Frozen ViT + prompt method + linear head on [CLS] after the final norm (``cls``) or, as VPT's MAE code, on the
    mean of the non-prefix tokens, prompts included, through a fresh LayerNorm (``mae_pool``: weight 1, bias 0, never
    trained, eps 1e-6; the pretrained final norm is not used)."""

    readouts = ("cls", "mae_pool")

    def __init__(self, backbone: nn.Module, method: PromptMethod, num_classes: int, **kwargs: object) -> None:
        if getattr(backbone, "global_pool", "token") != "token" or not isinstance(backbone.fc_norm, nn.Identity):
            raise PaeError(
                f"the backbone pools with '{backbone.global_pool}' (fc_norm {type(backbone.fc_norm).__name__}); "
                "prompt methods here classify from [CLS] after the final norm, as VPT does.",
                "use a ViT whose timm global_pool is 'token' (e.g. the DINOv2 or orig_in21k ViTs).",
            )
        super().__init__(backbone, method, num_classes, **kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        x = embed_tokens(bb, x)
        start, n_prompt = bb.num_prefix_tokens, 0
        for layer, block in enumerate(bb.blocks):
            previous = x[:, start : start + n_prompt] if n_prompt else None
            p = self.method.prompts(layer, x.shape[0], previous)
            if p is not None:
                x = torch.cat([x[:, :start], p.to(x.dtype), x[:, start + n_prompt :]], dim=1)
                n_prompt = p.shape[1]
            x = self.method.adjust_tokens(layer, block, x, start, n_prompt)
            kv = self.method.kv_prompts(layer, x.shape[0])
            x = block(x) if kv is None else block_with_kv(block, x, *kv)
        return bb.norm(x) if self.pool == "cls" else x

    def readout(self, features: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            return features[:, 0]
        pooled = features[:, self.backbone.num_prefix_tokens :].mean(dim=1)
        return F.layer_norm(pooled, pooled.shape[-1:], eps=1e-6)

    @staticmethod
    def layer_widths(backbone: nn.Module) -> list[int]:
        return [backbone.embed_dim] * len(backbone.blocks)

    @staticmethod
    def patch_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """After position embedding and norm_pre, where PromptedViT inserts prompts (norm_pre is Identity for DINOv2
        and the orig_in21k ViTs)."""
        return embed_tokens(backbone, images)[:, backbone.num_prefix_tokens :]

    @staticmethod
    def propagate_prompts(backbone: nn.Module, first: torch.Tensor) -> torch.Tensor:
        """(p, d) -> (L, p, d): layer l+1 is block l applied to the prompt-only sequence of layer l (PAE's code)."""
        states = [first]
        for block in backbone.blocks[:-1]:
            states.append(block(states[-1][None])[0])
        return torch.stack(states)


HEAD_INITS = ("kaiming_fan_out", "kaiming_fan_in", "trunc_normal")


def init_head(weight: torch.Tensor, how: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A (C, d) head weight, in place. kaiming_fan_out is VPT's and PAE's official head (kaiming_normal_, mode
    fan_out: std sqrt(2 / C)); kaiming_fan_in is torch's default mode (std sqrt(2 / d)); trunc_normal is BPT's
    trunc_normal_(std=0.02) with the default cut at +-2 (absolute: 100 std, so in effect N(0, 0.02))."""
    if how == "trunc_normal":
        return nn.init.trunc_normal_(weight, std=0.02, generator=generator)
    if how not in HEAD_INITS:
        raise PaeError(f"unknown head init '{how}'.", f"use one of: {', '.join(HEAD_INITS)}.")
    return nn.init.kaiming_normal_(weight, mode=how.removeprefix("kaiming_"), generator=generator)


def xavier_bound(patch_size: int, embed_dim: int) -> float:
    """VPT's prompt init range: Xavier-uniform with the patch projection's fan-in (3 * patch^2) and d."""
    return math.sqrt(6.0 / float(3 * patch_size * patch_size + embed_dim))


def check_initial_prompts(prompts: torch.Tensor, shape: torch.Size) -> None:
    """Initial prompts must cover every prompted layer with the method's (p, d); extra layers are ignored."""
    if prompts.dim() != 3 or prompts.shape[1:] != shape[1:] or prompts.shape[0] < shape[0]:
        raise ValueError(f"initial prompts {tuple(prompts.shape)} do not fit the method's prompts {tuple(shape)}")
