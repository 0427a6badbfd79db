"""How the prompted forward runs: one model, or several runs of one task as one vmapped model; compiled or eager.

One VTAB-1k run (800-1,000 images, batch 64-128) leaves most of a large GPU idle between kernels, and a task's
lr/wd search is 15 or more such runs. ``GroupForward`` stacks each run's trainable tensors (prompts, head, method
buffers) along a new leading dimension and runs the frozen backbone once under ``torch.func.vmap``: the backbone's
weights are shared, each run keeps its own tensors, and since the training loss is a sum of per-run losses over
disjoint tensors, each run's gradients are exactly its own. Evaluation images are shared by every run of the group.

Both forwards answer the same two calls, so the training loop does not know how many runs it drives:
``train(xs)`` -> one logits tensor per run, ``classify(x)`` -> (R, B) predicted classes for a shared batch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch.func import functional_call, vmap

from .prompts import PromptedViT


class Compiled:
    """``torch.compile(fn)`` that falls back to eager ``fn``, once and with a warning, when compilation fails.

    A compile failure (no C compiler, an unsupported Python, a graph the backend cannot lower) must not cost a grid
    its runs: the eager forward computes the same function (with prompt dropout, from other random draws). Only
    Dynamo's and the backends' errors switch to eager; anything else (out of memory, a bug in a model) is raised.

    A failure holds for the rest of the process, per backend: a grid builds the same graphs again for every group,
    and trying each again would cost its compile time and print the same warning every time. So the warning is
    printed once, and later forwards on that backend start eagerly."""

    failed: ClassVar[dict[str | Callable, str]] = {}  # backend -> the first failure's message, for the whole process

    def __init__(self, fn: Callable[..., Any], backend: str | Callable = "inductor") -> None:
        self.eager = fn
        self.backend = backend
        if backend in Compiled.failed:
            self.fn = fn
            return
        try:
            self.fn = torch.compile(fn, backend=backend)
        except Exception as exc:
            self._fall_back(exc)

    def _fall_back(self, exc: Exception) -> None:
        if self.backend not in Compiled.failed:
            Compiled.failed[self.backend] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            print(
                f"warning: torch.compile is unavailable here ({Compiled.failed[self.backend]}); running eagerly "
                "(the same function, slower) from now on in this process.",
                file=sys.stderr,
            )
        self.fn = self.eager

    def __call__(self, *args: Any) -> Any:
        if self.fn is not self.eager:
            try:
                return self.fn(*args)
            except Exception as exc:
                from torch._dynamo.exc import TorchDynamoException  # imported here: it costs every job a second

                if not isinstance(exc, TorchDynamoException):  # out of memory, a bug in a model: not hidden
                    raise
                self._fall_back(exc)
        return self.eager(*args)


def maybe_compiled(fn: Callable[..., Any], compile: bool) -> Callable[..., Any]:
    """``fn`` compiled (with the eager fallback) when asked, else ``fn`` itself."""
    return Compiled(fn) if compile else fn


class SingleForward:
    """One run: its model called directly (compiled when asked)."""

    def __init__(self, model: PromptedViT, compile: bool = False) -> None:
        self.model = model
        self.fn = maybe_compiled(model, compile)

    def train(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        self.model.train()
        return [self.fn(xs[0])]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.fn(x).argmax(-1)[None]


class GroupForward:
    """R runs of one method on one frozen backbone as one vmapped forward over their stacked trainable tensors.

    The runs' models must share the backbone object (their frozen weights are taken from it unbatched); the first
    model is the template whose code runs. Each call stacks the live per-run tensors, so autograd delivers every
    run's gradient to that run's own parameters and optimizers, checkpoints and diagnostics work per run as usual.
    Method buffers are fixed once training starts (restored states are copied in before the group is built).

    With prompt dropout, ``vmap`` draws each run's masks from the one global generator: a run's draws then depend
    on its group (reproducibly so, and resumed exactly), so a grouped run is an equally valid but different draw
    from the same run trained alone. Without dropout the two are the same computation.
    """

    def __init__(self, models: list[PromptedViT], compile: bool = False) -> None:
        template = models[0]
        if any(m.backbone is not template.backbone for m in models) or template.train_backbone:
            raise ValueError("a group's runs must share one frozen backbone")
        self.template = template
        params = [dict(m.named_parameters()) for m in models]
        self.trainable = {n: [p[n] for p in params] for n, t in params[0].items() if t.requires_grad}
        buffers = [dict(m.method.named_buffers()) for m in models]
        # fixed after the method's data fit: stacked once, not every step (BPT's whitening is (L, d, d) per run)
        self.buffers = {f"method.{n}": torch.stack([b[n] for b in buffers]) for n in buffers[0]}

        def forward(tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(template, tensors, (x,))

        # prompt dropout draws an independent mask per run; evaluation is deterministic and shares its images
        self.train_fn = maybe_compiled(vmap(forward, randomness="different"), compile)
        self.eval_fn = maybe_compiled(vmap(forward, in_dims=(0, None)), compile)

    def stacked(self) -> dict[str, torch.Tensor]:
        """The runs' live trainable tensors stacked (autograd reaches each run's own), and the fixed buffers."""
        return {**{n: torch.stack(ts) for n, ts in self.trainable.items()}, **self.buffers}

    def train(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        self.template.train()
        return list(self.train_fn(self.stacked(), torch.stack(xs)).unbind(0))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        self.template.eval()
        return self.eval_fn(self.stacked(), x).argmax(-1)


def make_forward(models: list[PromptedViT], compile: bool = False) -> SingleForward | GroupForward:
    """The forward of one run, or of a group of runs."""
    return SingleForward(models[0], compile) if len(models) == 1 else GroupForward(models, compile)
