"""Parameters and CPU/GPU step time of every prompt method; writes reports/methods/.

    python benchmarks/method_cost.py                      # ViT-S/14 (DINOv2 shape) at 224 px, batch 16
    python benchmarks/method_cost.py --device cuda --batch 128

It also counts every method's trainable parameters on every catalogue backbone it runs on (no weights needed).

Step time is the median of 3 SGD steps after one warm-up, fp32, no compile: it compares methods with one
another on one machine, it is not the fast path (that is benchmarks/throughput.py). Weights are random: the
cost of a step does not depend on their values.
"""

from __future__ import annotations

import argparse

import torch
from throughput import device_name  # benchmarks/ is on sys.path when this script runs

from pae.backbones import create_backbone, freeze
from pae.backbones.catalogue import CATALOGUE
from pae.reports.method_cost import backbone_rows, cost_rows, paper_rows, write_cost_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_small_patch14_dinov2")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-tokens", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default="reports/methods")
    args = parser.parse_args()
    torch.manual_seed(0)
    paper = paper_rows(freeze(create_backbone("vit_base_patch16_224", 224)))
    backbone = freeze(create_backbone(args.arch, args.img_size)).to(args.device)
    cost = cost_rows(backbone, args.img_size, args.batch, num_tokens=args.num_tokens)
    setting = (
        f"{args.arch}, {args.img_size} px, batch {args.batch}, {args.num_tokens} prompt tokens, fp32, "
        f"{device_name(torch.device(args.device))}, torch {torch.__version__}"
    )
    per_backbone = backbone_rows(list(CATALOGUE), num_tokens=args.num_tokens)
    print(write_cost_report(paper, cost, args.out_dir, setting, per_backbone).read_text())


if __name__ == "__main__":
    main()
