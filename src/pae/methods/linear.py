"""The two baselines without prompts: a linear probe on frozen [CLS] features, and full fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .registry import register_method


@dataclass
class NoOptions:
    """Nothing to set: the head (and, for full fine-tuning, the backbone) is all that trains."""


def no_prompts(backbone: Any, options: NoOptions) -> Any:
    from ..prompts.base import PromptMethod

    return PromptMethod()


register_method(
    "linear",
    summary="head only on frozen [CLS] features (linear probe)",
    options=NoOptions,
    prompts="none",
    order=0,
    backbones=("vit", "swin"),
)(no_prompts)
register_method(
    "full",
    summary="full fine-tuning of backbone and head",
    options=NoOptions,
    prompts="none",
    trains_backbone=True,
    order=1,
    backbones=("vit", "swin"),
)(no_prompts)
