"""VPT (Jia et al., ECCV 2022): prompts inserted once before block 1 (shallow) or fresh before every block (deep)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..config.options import option
from .registry import MethodSpec, register_method

DROPOUT_MASKS = ("official", "image", "batch", "deep_batch")


@dataclass
class VPTOptions:
    """The settings every prompt method shares; the other methods' options extend these."""

    num_tokens: int = option(10, "prompt tokens per layer")
    prompt_dropout: float = option(0.1, "dropout on the prompt tokens (VPT-deep's scripts: 0.1)")
    prompt_dropout_mask: str = option(
        "official",
        "image: one dropout mask per image (VPT's ViT code); batch: one mask for the whole batch (PAE's "
        "code drops before expanding); deep_batch: per image for the first prompts, one per batch for every deeper "
        "layer (VPT's Swin code); official: batch with PAE on, else image (deep_batch for deep prompts on Swin)",
        choices=DROPOUT_MASKS,
        ours="image",
    )

    def resolved(self, spec: MethodSpec, pae_enabled: bool, family: str = "vit") -> VPTOptions:
        """'official' as the code that made the numbers: PAE's (batch) with PAE on, else VPT's for the family."""
        if self.prompt_dropout_mask != "official":
            return self
        if pae_enabled:
            return replace(self, prompt_dropout_mask="batch")
        return replace(self, prompt_dropout_mask="deep_batch" if family == "swin" and spec.deep else "image")


@dataclass
class VPTShallowOptions(VPTOptions):
    prompt_dropout: float = option(0.0, "dropout on the prompt tokens (VPT: none for VPT-shallow)")


@register_method(
    "vpt_shallow",
    summary="VPT-shallow: prompts inserted once before block 1",
    options=VPTShallowOptions,
    prompts="shallow",
    order=2,
    backbones=("vit", "swin"),
)
def vpt_shallow(backbone: Any, o: VPTShallowOptions) -> Any:
    return _vpt(backbone, o, deep=False)


@register_method(
    "vpt_deep",
    summary="VPT-deep: fresh prompts replace the prompt positions before every block",
    options=VPTOptions,
    order=3,
    backbones=("vit", "swin"),
)
def vpt_deep(backbone: Any, o: VPTOptions) -> Any:
    return _vpt(backbone, o, deep=True)


def _vpt(backbone: Any, o: VPTOptions, deep: bool) -> Any:
    from ..backbones import backbone_family
    from ..prompts.base import dims
    from ..prompts.vpt import VPT

    if backbone_family(backbone) == "swin":
        from ..prompts.swin import SwinPrompts

        return SwinPrompts.for_backbone(backbone, o.num_tokens, deep, o.prompt_dropout, o.prompt_dropout_mask)

    depth, dim, patch = dims(backbone)
    return VPT(depth, dim, patch, o.num_tokens, deep=deep, dropout=o.prompt_dropout, mask=o.prompt_dropout_mask)
