"""Frozen timm backbones (ViT, Swin), their release formats, weight importers and the catalogue.

Names are imported on first use, so that ``pae.backbones.catalogue`` (plain data) loads without torch.
"""

from importlib import import_module

_HOME = {
    "create_backbone": "factory",
    "backbone_family": "factory",
    "freeze": "factory",
    "import_backbone": "factory",
    "load_backbone": "factory",
    "describe": "checkpoints",
    "read_metadata": "checkpoints",
    "sha256_of": "checkpoints",
    "write_half": "checkpoints",
}
__all__ = [
    "backbone_family",
    "create_backbone",
    "describe",
    "freeze",
    "import_backbone",
    "load_backbone",
    "read_metadata",
    "sha256_of",
    "write_half",
]


def __getattr__(name: str) -> object:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)
