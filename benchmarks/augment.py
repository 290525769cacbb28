"""Images per second of balance-and-augment on pbc128, against a naive per-image baseline.

Both sides do the same work per record with the same layers (the configured policy, Bmk
policy and CutMix/MixUp): the stage runs it as its Beam pipeline, batched and vectorised; the
baseline is a Python loop that augments one image at a time (mixing one pair at a time) and
writes records one by one with a TFRecordWriter. The baseline runs on the first
``--baseline-records`` planned records (it is slow) and is reported per image.

    .venv/bin/python benchmarks/augment.py --fraction 0.06 --size 96

A subset of pbc128 is used (``--fraction`` of every class folder, keeping the natural class
imbalance), because the whole set takes long on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PBC128 = REPO.parent / "shared" / "data" / "pbc128"


def build_dataset(root: Path, folder: Path, fraction: float, size: int, seed: int) -> Path:
    """A Dataset folder from every k-th image of each class, split 70/15/15 per class."""
    from PIL import Image

    from hemaflow import storage
    from hemaflow.data import dataset

    classes = sorted(p for p in root.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    parts: dict[str, tuple[list, list, list]] = {s: ([], [], []) for s in dataset.DATA_SPLITS}
    step = max(1, round(1 / fraction))
    for label, class_dir in enumerate(classes):
        files = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in (".jpg", ".jpeg"))
        chosen = files[::step]
        order = rng.permutation(len(chosen))
        n_val = n_test = max(1, round(0.15 * len(chosen)))
        for rank, index in enumerate(order):
            split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            with Image.open(chosen[index]) as im:
                parts[split][0].append(np.asarray(im.convert("RGB").resize((size, size))))
            parts[split][1].append(label)
            parts[split][2].append(f"{class_dir.name}/{chosen[index].name}")
    folder.mkdir(parents=True)
    files, counts = {}, {}
    names = [c.name for c in classes]
    for split, (images, labels, ids) in parts.items():
        data = dataset.Split(np.stack(images), np.asarray(labels, np.int64), np.asarray(ids))
        files[f"{split}.npz"] = dataset.save_split(folder, split, data)
        counts[split] = {n: int((data.labels == c).sum()) for c, n in enumerate(names)}
    dataset.write_manifest(
        folder,
        {
            "kind": "dataset",
            "class_names": names,
            "image_size": size,
            "counts": counts,
            "files": files,
            "seed": seed,
            "synthetic": False,
            "source": f"{root} (every {step}th image)",
        },
    )
    (folder / storage.COMPLETE_MARKER).write_text("")  # what artifact_dir marks a finished one
    return folder


def naive_baseline(dataset_dir: str, config, out_path: Path, limit: int) -> tuple[int, float]:
    """Augment and write the first ``limit`` planned records one image at a time."""
    import tensorflow as tf
    from hemaflow.components import augment

    from hemaflow.data import tfrecords
    from hemaflow.imaging.policy import batch_seed, one_hot

    manifest, splits = augment.load_dataset(dataset_dir)
    classes = len(manifest["class_names"])
    tools = augment.augmenters(config.augment)
    batches = augment.plan_batches(splits, classes, config.augment, config.seed)
    # Interleave kinds so the subset is representative of the whole job.
    jobs = [(b, r) for b in batches for r in b.rows]
    jobs = [jobs[i] for i in np.random.default_rng(0).permutation(len(jobs))[:limit]]
    options = tf.io.TFRecordOptions(compression_type=tfrecords.COMPRESSION)
    started = time.perf_counter()
    with tf.io.TFRecordWriter(str(out_path), options) as writer:
        for n, (batch, row) in enumerate(jobs):
            split = splits[batch.source]
            image = split.images[row : row + 1]
            soft = one_hot(split.labels[row : row + 1], classes)
            seed = batch_seed(config.seed, f"{batch.split}/{batch.kind}", n)
            if batch.kind == "augmented":
                image = tools["policy"](image, seed)
            elif batch.kind == "bmk":
                image = tools["bmk"](image, seed)
            elif batch.kind == "mixed":
                partner = (row + 1) % len(split)
                pair = tools["policy"](split.images[[row, partner]], seed)
                labels = one_hot(split.labels[[row, partner]], classes)
                mixed, mixed_soft, _ = tools["mixer"](pair, labels, seed)
                image, soft = mixed[:1], mixed_soft[:1]
            png = augment.encode_pngs(image)[0]
            record = tfrecords.encode_example(image[0], soft[0], str(split.ids[row]), png=png)
            writer.write(record)
    return len(jobs), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=PBC128, help="pbc128 folder (read-only)")
    parser.add_argument("--fraction", type=float, default=0.06, help="share of each class used")
    parser.add_argument("--size", type=int, default=96, help="working image size in pixels")
    parser.add_argument("--profile", default="cpu", help="configuration profile")
    parser.add_argument("--baseline-records", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    from hemaflow.components import augment

    from hemaflow.config import load_config

    config = load_config(args.profile)
    with tempfile.TemporaryDirectory(prefix="hemaflow-bench-") as tmp:
        tmp_path = Path(tmp)
        ds = build_dataset(args.data, tmp_path / "dataset", args.fraction, args.size, config.seed)
        warm = build_dataset(args.data, tmp_path / "warm", 0.005, args.size, config.seed)
        # Warm-up on a tiny Dataset of the same size: graphs are traced once per process and
        # image size, and both paths below reuse them.
        augment.run(str(warm), str(tmp_path / "warm-records"), config)
        summary = augment.run(str(ds), str(tmp_path / "records"), config)
        records = sum(summary["totals"].values())
        beam_rate = records / summary["seconds"]
        count, seconds = naive_baseline(
            str(ds), config, tmp_path / "naive.tfrecord.gz", args.baseline_records
        )
        naive_rate = count / seconds
    result = {
        "images": {k: v for k, v in summary["totals"].items()},
        "image_size": args.size,
        "profile": args.profile,
        "fraction": args.fraction,
        "beam_records": records,
        "beam_seconds": round(summary["seconds"], 2),
        "beam_images_per_s": round(beam_rate, 1),
        "naive_records": count,
        "naive_seconds": round(seconds, 2),
        "naive_images_per_s": round(naive_rate, 1),
        "speedup": round(beam_rate / naive_rate, 2),
    }
    print(json.dumps(result, indent=2))
    print(
        f"balance-and-augment (Beam, batched): {beam_rate:.1f} images/s; "
        f"naive per-image loop: {naive_rate:.1f} images/s; ratio {beam_rate / naive_rate:.1f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
