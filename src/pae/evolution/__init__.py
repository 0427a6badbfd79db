"""PAE (Prompt-Agnostic Evolution): frequency-shortcut init, a shared Koopman operator, a Lyapunov regularizer.

Its settings (``PAEOptions``, ``PARTS``, ``SETTINGS_OF``) live in the torch-free ``pae.config.pae``."""

from .pae import PAE

__all__ = ["PAE"]
