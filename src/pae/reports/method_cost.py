"""What each prompt method costs: trainable parameters (beside the papers' reported counts) and step time."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..files import write_csv, write_text
from ..methods import options_for, ordered
from ..prompts import PromptedModel, build_model

# Counts the papers report for ViT-B/16 (d = 768, 12 blocks), prompt parameters only (no head), with the
# settings that produce them. BPT's ablation lists VPT-shallow beside its own variants with 100 prompts.
PAPER_COUNTS = [
    ("vpt_shallow", {"num_tokens": 100}, 76_800, "BPT (ICCV 2025) ablation: VPT, 100 prompts"),
    ("bpt_fwhiten_shallow", {"num_tokens": 100}, 76_800, "BPT: fWhiten learns only P (W fixed)"),
    ("bpt_twhiten_shallow", {"num_tokens": 100}, 666_600, "BPT: tWhiten 66.66e-2 M"),
    ("bpt_bilinear_shallow", {"num_tokens": 100, "bpt_rank": 75}, 65_100, "BPT: bilinear r=75, 6.51e-2 M"),
]


def prompt_parameters(model: PromptedModel) -> int:
    """Trainable parameters of the prompt method alone (the head is the same for every method)."""
    return sum(p.numel() for p in model.method.parameters() if p.requires_grad)


def step_time(model: PromptedModel, batch: int, img_size: int, steps: int = 3) -> float:
    """Median seconds of one SGD step (forward, backward, update) after one warm-up step, on the model's device."""
    device = next(model.parameters()).device
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, model.head.out_features, (batch,), device=device)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
    model.train()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def paper_rows(backbone: torch.nn.Module) -> list[dict]:
    rows = []
    for method, options, reported, source in PAPER_COUNTS:
        ours = prompt_parameters(build_model(method, backbone, 2, **options))
        rows.append(
            {
                "method": method,
                "settings": " ".join(f"{k}={v}" for k, v in options.items()),
                "ours": ours,
                "paper": reported,
                "relative_difference": abs(ours - reported) / reported,
                "source": source,
            }
        )
    return rows


def backbone_rows(names: list[str], num_tokens: int = 10, num_classes: int = 100) -> list[dict]:
    """Trainable parameters of every method on every catalogue backbone it runs on, at the papers' resolution.

    Counting needs no weights: the backbones are built on the meta device (ViT-H/14 would take 2.5 GB)."""
    from ..backbones import backbone_family, create_backbone
    from ..backbones.catalogue import backbone

    rows = []
    for name in names:
        entry = backbone(name)
        with torch.device("meta"):
            net = create_backbone(entry.arch.split(".")[0], entry.img_size)
        family = backbone_family(net)
        for spec in ordered():
            if family not in spec.backbones:
                continue
            with torch.device("meta"):
                model = build_model(spec.name, net, num_classes, **options_for(spec.name, {"num_tokens": num_tokens}))
            rows.append(
                {
                    "backbone": name,
                    "method": spec.name,
                    "prompt_params": prompt_parameters(model),
                    "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
                    "backbone_params": sum(p.numel() for p in net.parameters()),
                }
            )
    return rows


def cost_rows(
    backbone: torch.nn.Module,
    img_size: int,
    batch: int,
    num_classes: int = 10,
    methods: list[str] | None = None,
    **options: object,
) -> list[dict]:
    rows = []
    for method in methods or [spec.name for spec in ordered()]:
        model = build_model(method, backbone, num_classes, **options_for(method, options))
        rows.append(
            {
                "method": method,
                "prompt_params": prompt_parameters(model),
                "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
                "step_time_s": step_time(model, batch, img_size),
            }
        )
    return rows


def write_cost_report(
    paper: list[dict], cost: list[dict], out_dir: str | Path, setting: str, per_backbone: list[dict] | None = None
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(paper, out / "params_vs_papers.csv")
    write_csv(cost, out / "cost.csv")
    lines = [
        "# Prompt methods: parameters and step time",
        "",
        "## Trainable prompt parameters on ViT-B/16 against the papers' reported counts",
        "",
        "| method | settings | ours | paper | difference | source |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['settings']} | {r['ours']:,} | {r['paper']:,} | {100 * r['relative_difference']:.2f}% "
        f"| {r['source']} |"
        for r in paper
    ]
    lines += [
        "",
        "Paper counts are rounded to the digits they print (e.g. 66.66e-2 M).",
        "",
        f"## Cost per method: {setting}",
        "",
        "| method | prompt params | trainable params (with head) | step time (s) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['prompt_params']:,} | {r['trainable_params']:,} | {r['step_time_s']:.3f} |" for r in cost
    ]
    if per_backbone:
        write_csv(per_backbone, out / "params_per_backbone.csv")
        lines += [
            "",
            "## Trainable parameters per backbone (methods on the backbones they run on; head for 100 classes)",
            "",
            "| backbone | method | prompt params | trainable params (with head) | % of the backbone |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['backbone']} | {r['method']} | {r['prompt_params']:,} | {r['trainable_params']:,} | "
            f"{100 * r['trainable_params'] / r['backbone_params']:.3f} |"
            for r in per_backbone
        ]
    lines.append("")
    write_text("\n".join(lines) + "\n", out / "README.md")
    return out / "README.md"
