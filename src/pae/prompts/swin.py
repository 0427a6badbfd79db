"""VPT on a frozen timm Swin Transformer, shallow and deep: VPT's Swin algorithm ("prepend"), our code.

Swin has no [CLS] token and attends within windows, so VPT's Swin (KMnP/vpt,
src/models/vit_prompt/swin_transformer.py) prompts it differently from a ViT:

- a stage's p prompts live beside the feature map as a (B, p, C) sequence, with no position;
- in every block they are LayerNorm-ed with the image tokens and joined to *every* window, so each window's
  attention runs over p + window_area tokens; the relative position bias and the shifted-window mask are zero
  in the prompts' rows and columns (prompts attend to, and are seen by, every token of every window);
- a prompt's attention output is the mean over windows of its outputs there; residual and MLP as for tokens;
- at patch merging a prompt is tiled 4x (4C) and goes through the merge's own LayerNorm and reduction to the
  next stage's width 2C. Only shallow prompts live through this: deep ones are replaced before every block,
  the first block of each stage included;
- the classifier reads the final-norm tokens averaged over all of them, prompts included.

Deep: stage s holds one prompt set per block, (depth_s, p, C_s); shallow: one set (1, p, C_0) before the first
block (``SwinPrompts``). Xavier-uniform init with the patch fan-in and C_0 for every stage, as VPT. Deliberate
deviation: windows and their prompts are paired per sample (the official code expands prompts window-major while
windows are batch-major, which mixes samples' prompts when the batch holds more than one image; at batch size 1 the
two agree). Prompt dropout is the official code's by default (``prompt_dropout_mask`` official -> deep_batch: a mask
per image for the first prompts, one per batch for the deep ones; ``image`` draws one per image everywhere). Zero
prompts reproduce timm's forward.

PAE's MPA (``PromptedSwin.patch_tokens``, ``propagate_prompts``) is ours: PAE's code has no Swin prompting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import LayerPrompts, PromptedModel, Trajectory, as_stages, check_initial_prompts, xavier_bound


def merge_prompts(merge: nn.Module, prompts: torch.Tensor) -> torch.Tensor:
    """Prompts (B, p, C) across timm's PatchMerging (nn.Identity in stage 0): tiled to 4C, merge norm + reduction."""
    if isinstance(merge, nn.Identity):
        return prompts
    return merge.reduction(merge.norm(prompts.repeat(1, 1, 4)))


def attend(attn: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """timm ``WindowAttention``'s attention on token groups (b_, n, C) with an additive bias (None: plain)."""
    b_, n, _ = x.shape
    q, k, v = attn.qkv(x).reshape(b_, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=None if bias is None else bias.to(q.dtype),
        scale=attn.scale,
        dropout_p=attn.attn_drop.p if attn.training else 0.0,
    )
    return attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(b_, n, -1)))


def window_attention(attn: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, n_prompts: int) -> torch.Tensor:
    """timm ``WindowAttention.forward`` on windows (B * nW, n_prompts + area, C) whose first tokens are prompts.

    The relative position bias and the shift mask (nW, area, area) are padded with zeros for the prompts.
    """
    bias = F.pad(attn._get_rel_pos_bias(), (n_prompts, 0, n_prompts, 0))  # (1, heads, n, n)
    if mask is not None:  # windows are batch-major: window w of sample b is row b * nW + w
        mask = F.pad(mask, (n_prompts, 0, n_prompts, 0))
        bias = (bias.unsqueeze(1) + mask[None, :, None]).expand(x.shape[0] // mask.shape[0], -1, -1, -1, -1)
        bias = bias.flatten(0, 1)
    return attend(attn, x, bias)


def shifted_window_attention(
    block: nn.Module, x: torch.Tensor, prompts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``SwinTransformerBlock._attn`` on the normed map x (B, H, W, C), the normed prompts in every window.

    Returns the map's attention output and the prompts' (B, p, C), the mean of their outputs over the windows.
    """
    from timm.models.swin_transformer import window_partition, window_reverse

    b, h, w, _ = x.shape
    (wh, ww), shift = block.window_size, block.shift_size
    if any(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    x = F.pad(x, (0, 0, 0, (-w) % ww, 0, (-h) % wh))
    windows = window_partition(x, block.window_size).flatten(1, 2)  # (B * nW, area, C)
    n_win, p = windows.shape[0] // b, prompts.shape[1]
    tokens = torch.cat([prompts.unsqueeze(1).expand(-1, n_win, -1, -1).flatten(0, 1), windows], dim=1)
    mask = block.get_attn_mask(x) if block.dynamic_mask else block.attn_mask
    out = window_attention(block.attn, tokens, mask, p)
    prompts = out[:, :p].unflatten(0, (b, n_win)).mean(dim=1)
    x = window_reverse(out[:, p:].unflatten(1, (wh, ww)), block.window_size, x.shape[1], x.shape[2])[:, :h, :w]
    if any(shift):
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    return x, prompts


def mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The second half of a timm ``SwinTransformerBlock``: x + MLP(norm2(x))."""
    return x + block.drop_path2(block.mlp(block.norm2(x)))


def prompted_block(block: nn.Module, x: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``SwinTransformerBlock.forward`` on the map (B, H, W, C) and the prompts (B, p, C), side by side."""
    a, ap = shifted_window_attention(block, block.norm1(x), block.norm1(prompts))
    return mlp_residual(block, x + block.drop_path1(a)), mlp_residual(block, prompts + block.drop_path1(ap))


def prompt_only_block(block: nn.Module, prompts: torch.Tensor) -> torch.Tensor:
    """A Swin block on the prompts (B, p, C) alone: one window of p tokens, no position bias, no shift mask."""
    return mlp_residual(block, prompts + block.drop_path1(attend(block.attn, block.norm1(prompts), None)))


class SwinPrompts(LayerPrompts):
    """VPT's Swin prompts: deep, one (p, C_s) set per block of stage s, layers counted across stages; shallow, one
    (p, C_0) set before the first block. Xavier-uniform with the patch fan-in and C_0 for every stage, as VPT."""

    def __init__(
        self,
        stage_dims: list[int],
        stage_depths: list[int],
        init_bound: float,
        num_tokens: int,
        deep: bool,
        dropout: float = 0.0,
        mask: str = "image",
    ) -> None:
        sets = list(stage_depths) if deep else [1]
        super().__init__(sum(sets), num_tokens, dropout, mask)
        self.deep = deep
        self.embeddings = nn.ParameterList(
            [
                nn.Parameter(torch.empty(n, num_tokens, d).uniform_(-init_bound, init_bound))
                for n, d in zip(sets, stage_dims)
            ]
        )
        self.places = [(s, i) for s, n in enumerate(sets) for i in range(n)]  # layer -> (stage, block)

    @classmethod
    def for_backbone(cls, backbone: nn.Module, num_tokens: int, deep: bool, dropout: float, mask: str) -> SwinPrompts:
        dims = [stage.blocks[0].dim for stage in backbone.layers]
        depths = [len(stage.blocks) for stage in backbone.layers]
        bound = xavier_bound(backbone.patch_embed.patch_size[0], dims[0])  # VPT: C_0's bound for every stage
        return cls(dims, depths, bound, num_tokens, deep, dropout, mask)

    def prompt_set(self, layer: int) -> torch.Tensor:
        stage, block = self.places[layer]
        return self.embeddings[stage][block]

    @torch.no_grad()
    def initialize(self, prompts: Trajectory) -> None:
        """Per-stage initial prompts (MPA's), each stage at least as deep as this method's; extra layers ignored."""
        stages = as_stages(prompts)
        if len(stages) < len(self.embeddings):
            raise ValueError(f"initial prompts hold {len(stages)} stages, the method {len(self.embeddings)}")
        for embedding, init in zip(self.embeddings, stages):
            check_initial_prompts(init, embedding.shape)
            embedding.copy_(init[: embedding.shape[0]])

    def trajectory(self) -> list[torch.Tensor]:
        """Prompt states per stage, each (L_s, p, C_s): widths grow 2x per stage, so there is no single (L, p, d)."""
        return list(self.embeddings)

    def per_layer_parameters(self) -> list[nn.Parameter]:
        return list(self.embeddings)

    def layer_grad_norms(self) -> torch.Tensor:
        """L2 norm of the prompt gradient per prompted block, stages in order (sum of L_s,)."""
        return torch.cat(
            [
                p.grad.flatten(1).float().norm(dim=1) if p.grad is not None else p.new_zeros(p.shape[0])
                for p in self.embeddings
            ]
        )


class PromptedSwin(PromptedModel):
    """Frozen timm Swin + a prompt method's per-stage prompts (module docstring) + a linear head on the mean final
    token. Methods give prompts by block index counted across stages (``SwinPrompts``); None carries the current
    prompts on, through patch merging too (shallow)."""

    readouts = ("mean_all",)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Final-norm tokens (B, p + H * W, C): the prompts, then the last feature map row by row."""
        bb = self.backbone
        x = bb.patch_embed(images)  # (B, H, W, C)
        prompts = x.new_zeros(x.shape[0], 0, x.shape[-1])
        layer = 0
        for stage in bb.layers:
            x, prompts = stage.downsample(x), merge_prompts(stage.downsample, prompts)
            for block in stage.blocks:
                new = self.method.prompts(layer, x.shape[0], prompts if prompts.shape[1] else None)
                prompts = prompts if new is None else new.to(x.dtype)
                x, prompts = prompted_block(block, x, prompts)
                layer += 1
        return torch.cat([bb.norm(prompts), bb.norm(x).flatten(1, 2)], dim=1)

    def readout(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=1)

    @staticmethod
    def layer_widths(backbone: nn.Module) -> list[int]:
        return [block.dim for stage in backbone.layers for block in stage.blocks]

    @staticmethod
    def patch_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The normed patch embedding (B, H * W, C_0): Swin-B has no absolute position embedding."""
        return backbone.patch_embed(images).flatten(1, 2)

    @staticmethod
    def propagate_prompts(backbone: nn.Module, first: torch.Tensor) -> list[torch.Tensor]:
        """(p, C_0) -> per stage (L_s, p, C_s): the prompt-only sequence through every block, and across patch merging
        as shallow prompts cross it (tiled 4x, the merge's norm and reduction), so stage s starts from the merged
        output of stage s-1's last block. The ViT's propagation, stage by stage (our design: PAE has no Swin code)."""
        prompts, stages = first[None], []
        for stage in backbone.layers:
            prompts, states = merge_prompts(stage.downsample, prompts), []
            for block in stage.blocks:
                states.append(prompts[0])
                prompts = prompt_only_block(block, prompts)
            stages.append(torch.stack(states))
        return stages
