"""How fast the two corruption suites corrupt images: what they add to the evaluate stage.

Times ``corrupt`` for every type x severity 1-5 of the own suite
(:mod:`hemaflow.imaging.corruptions`, TensorFlow graphs) and of the independent benchmark
(:mod:`hemaflow.imaging.independent`, albumentations, one image at a time) on real pbc128
images, and prints images/s per type and overall. Only corruption: predicting the corrupted
sets costs the same per image for both suites.

    .venv/bin/python benchmarks/corruption_speed.py                  # 1000 images at 96 px
    .venv/bin/python benchmarks/corruption_speed.py --images 200 --size 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PBC128 = REPO.parent / "shared" / "data" / "pbc128"


def load(root: Path, count: int, size: int) -> np.ndarray:
    """``count`` real images, spread evenly over the classes, resized to ``size``."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    per_class = -(-count // len(classes))
    images = [
        np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR))
        for c in classes
        for f in sorted(c.iterdir())[:per_class]
    ]
    return np.stack(images[:count]).astype(np.uint8)


def time_suite(label: str, table, corrupt, images: np.ndarray) -> float:
    """Seconds for every type x severity 1-5 of one suite; prints a line per type."""
    corrupt(images[:8], next(iter(table)), 1, 0)  # warm-up: imports, traces
    total = 0.0
    for name in table:
        start = time.perf_counter()
        for severity in range(1, 6):
            corrupt(images, name, severity, 0)
        seconds = time.perf_counter() - start
        total += seconds
        print(f"  {label:11s} {name:16s} {5 * len(images) / seconds:8.0f} images/s")
    count = len(table) * 5 * len(images)
    print(
        f"{label}: {len(table)} types x 5 severities x {len(images)} images = {count} in "
        f"{total:.1f} s, {count / total:.0f} images/s"
    )
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--data", type=Path, default=PBC128)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from hemaflow.imaging import corruptions, independent

    images = load(args.data, args.images, args.size)
    print(f"{len(images)} pbc128 images at {args.size} px")
    own = time_suite("own", corruptions.CORRUPTIONS, corruptions.corrupt, images)
    ind = time_suite("independent", independent.INDEPENDENT, independent.corrupt, images)
    print(f"independent / own suite time: {ind / own:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
