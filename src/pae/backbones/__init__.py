"""Frozen timm ViT backbones and their weight importers."""
from .checkpoints import describe, read_metadata, sha256_of
from .factory import create_vit, freeze, import_backbone, load_backbone

__all__ = ["create_vit", "describe", "freeze", "import_backbone", "load_backbone", "read_metadata", "sha256_of"]
