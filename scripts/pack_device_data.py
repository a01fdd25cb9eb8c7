"""Copy image datasets into a folder that can travel to a GPU machine, shrunk to what training reads.

The device tool carries at most 64 MiB and does not carry ``../shared``. Whole-image training
decodes every photo to a shorter side of 256 px, so photos larger than that are re-encoded at
that size (JPEG quality ``--quality``); smaller photos and every non-image file (label files)
are copied unchanged, keeping each dataset's layout and file names. The output folder must be
git-ignored; it is never committed.

    python scripts/pack_device_data.py ../shared/data/twitter-you2015 ../shared/data/emotion6 --out .gpu/data
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def pack_file(src: Path, dst: Path, short_side: int, quality: int, reencode_all: bool = False) -> None:
    """Copy one file; an image larger than ``short_side`` (any JPEG with ``reencode_all``) is re-encoded."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() in IMAGE_SUFFIXES:
        with Image.open(src) as im:
            w, h = im.size
            fmt = "PNG" if src.suffix.lower() == ".png" else "JPEG"
            if min(w, h) > short_side or (reencode_all and fmt == "JPEG"):
                scale = min(1.0, short_side / min(w, h))
                small = im.convert("RGB")
                if scale < 1.0:
                    small = small.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
                small.save(dst, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
                return
    shutil.copyfile(src, dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+", type=Path, help="dataset folders (their names are kept)")
    ap.add_argument("--out", type=Path, required=True, help="git-ignored output folder")
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--quality", type=int, default=75)
    ap.add_argument("--reencode-all", action="store_true", help="re-encode small JPEGs too (smaller folder)")
    args = ap.parse_args(argv)
    total = 0
    for root in args.datasets:
        if not root.is_dir():
            print(f"error: {root} is not a folder", file=sys.stderr)
            return 2
        for src in sorted(p for p in root.rglob("*") if p.is_file()):
            dst = args.out / root.name / src.relative_to(root)
            pack_file(src, dst, args.short_side, args.quality, args.reencode_all)
            total += dst.stat().st_size
        print(f"{root.name}: packed")
    print(f"{total / 2**20:.1f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
