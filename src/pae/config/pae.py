"""PAE's settings (torch-free): its three switchable parts and what each part reads.

The part modules live in ``pae.evolution``; this is what the command line, the params checks and the Snakefile need
to know about them without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PaeError
from .options import check_choices, option

PARTS = ("init", "koopman", "lyapunov")  # the switchable parts, in the paper's order
SETTINGS_OF = {  # which settings each part reads: a pipeline passes a run only its parts' settings, so changing
    # e.g. the Koopman weight reruns the Koopman runs and not the init-only ones
    "init": ("scorer", "zero_prompt_scoring", "window", "stride", "init_images", "folds", "conjugate_pairs"),
    "koopman": ("koopman_dim", "koopman_weight", "koopman_mode", "norm_preserving", "chain_start", "clip"),
    "lyapunov": ("lyapunov_weight", "lyapunov_form", "lyapunov_target"),
}
SCORERS = ("random_head", "linear_probe", "ncm")
KOOPMAN_MODES = ("global", "layerwise")
LYAPUNOV_FORMS = ("hinge", "official")
LYAPUNOV_TARGETS = ("prediction", "next")


@dataclass
class PAEOptions:
    """PAE's settings; on the command line each is ``--pae-<name>``."""

    init: bool = option(False, "MPA: frequency-shortcut discovery + task-aware prompt init")
    koopman: bool = option(False, "Koopman consistency over the prompt trajectory")
    lyapunov: bool = option(False, "Lyapunov stability regularizer (needs koopman)")
    scorer: str = option(
        "random_head",
        "band scorer: random_head (the official code: an untrained fan-out head, "
        "in-sample) | linear_probe | ncm (fitted, cross-fitted over `folds`)",
        choices=SCORERS,
        ours="linear_probe",
    )
    zero_prompt_scoring: bool = option(
        True,
        "score bands through the model with all-zero prompts (the official code) rather than the prompt-free backbone",
        ours=False,
    )
    window: int = option(0, "band size on the centred spectrum; 0: 16 at 224 px, scaled with the resolution")
    stride: int = option(0, "band stride; 0: window // 2")
    init_images: int = option(128, "training images for MPA (the official code: one batch of 128)")
    folds: int = option(2, "cross-fitting folds of the fitted scorers (1: fit and score on the same images)")
    conjugate_pairs: bool = option(False, "keep each band with its point-mirrored partner (Wang et al.); official: off")
    koopman_dim: int = option(256, "Koopman lift dimension k")
    koopman_weight: float = option(0.5, "alpha, the weight of L_kp")
    lyapunov_weight: float = option(0.2, "beta, the weight of L_stab")
    koopman_mode: str = option(
        "global", "global (one K) | layerwise (one K per transition, ablation)", choices=KOOPMAN_MODES
    )
    lyapunov_form: str = option(
        "official",
        "official (the Feb-2026 code: Q/||Q||, norm clamp, softplus, tanh) | hinge (the paper's relu(V(zK) - V(z)))",
        choices=LYAPUNOV_FORMS,
        ours="hinge",
    )
    lyapunov_target: str = option(
        "prediction", "prediction: V(z_l K) as the code | next: V(z_{l+1}) as its README", choices=LYAPUNOV_TARGETS
    )
    norm_preserving: bool = option(False, "keep U orthonormal against the collapse U -> 0 (a deviation)")
    chain_start: int = option(
        1,
        "first prompt layer of the Koopman chain: 1, the deep prompts only (the official "
        "code); 0 also chains the first layer's prompts",
        ours=0,
    )
    clip: float = option(10.0, "gradient-norm clip of the regularizer's parameters (official: 10)")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, part) for part in PARTS)

    @property
    def label(self) -> str:
        """The variant's name in metrics and tables: 'none', or its parts joined by '+', e.g. 'init+koopman'."""
        return "+".join(part for part in PARTS if getattr(self, part)) or "none"

    def validate(self) -> None:
        """Every setting checked up front, whether or not its part is on: a typo never waits for a later run."""
        check_choices(self, "pae_")
        for name in ("window", "stride", "chain_start", "koopman_weight", "lyapunov_weight"):
            if getattr(self, name) < 0:
                raise PaeError(f"pae_{name} must be >= 0, got {getattr(self, name)}.", f"set pae_{name} >= 0.")
        for name in ("init_images", "folds", "koopman_dim", "clip"):
            if getattr(self, name) <= 0:
                raise PaeError(f"pae_{name} must be positive, got {getattr(self, name)}.", f"set pae_{name} > 0.")
        if self.lyapunov and not self.koopman:
            raise PaeError(
                "the Lyapunov regularizer acts on the Koopman step, but pae_koopman is off.",
                "turn pae_koopman on too, or pae_lyapunov off.",
            )
