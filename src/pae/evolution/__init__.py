"""PAE (Prompt-Agnostic Evolution): frequency-shortcut init, a shared Koopman operator, a Lyapunov regularizer."""
from .pae import PAE, PARTS, SETTINGS_OF, PAEOptions

__all__ = ["PAE", "PARTS", "SETTINGS_OF", "PAEOptions"]
