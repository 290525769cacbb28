"""Training images/s of final training with and without AugMix + JSD, in one run.

Real pbc128 images as TFRecords; the same backbone trained from the same initial weights
plain and with ``train.consistency.kind: augmix_jsd`` (two AugMix views per image in
``tf.data``, one forward pass on 3x the batch). Epochs alternate between the two so that
load from other processes hits both alike; the first epoch of each (tracing, cache filling)
is left out and the median of the rest reported. Also the input pipeline alone (images/s the
AugMix ``tf.data`` map delivers), to show whether it or the model sets the pace.

    .venv/bin/python benchmarks/augmix_jsd_speed.py --size 96 --per-class 40 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbc128", default=str(REPO.parent / "shared" / "data" / "pbc128"))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--backbone", default="resnet_mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per variant, +1")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    from hemaflow.config import load_config
    from hemaflow.modeling import consistency, fitting
    from tests.helpers import write_pbc_tfrecords

    data = Path(tempfile.mkdtemp()) / "tfr"
    split = {"train": args.per_class, "val": 2}
    write_pbc_tfrecords(Path(args.pbc128), data, args.size, split)
    rates: dict[str, list[float]] = {}
    feeds, models = {}, {}
    for kind in ("none", "augmix_jsd"):
        overrides = {
            "model.batch_size": args.batch_size,
            "train.consistency.kind": kind,
            "model.weights": "none",
        }
        config = load_config("quickstart", overrides=overrides)
        s = fitting.setup(str(data), args.backbone, config)
        hp = fitting.default_hparams(config)
        with s.strategy.scope():
            model = fitting.build(s, config, hp)  # same seed: same initial weights
            fit_model = consistency.wrap(model, config.train.consistency)
        fitting.compile_phase(s, fit_model, hp, hp.learning_rate, args.epochs + 1)
        feeds[kind] = fitting.dataset(
            s.info, "train", s.batch_size, True, config.seed, 0, config.train.consistency
        )
        models[kind], rates[kind] = fit_model, []
        images = s.train_images
    pipeline = {}
    for kind, ds in feeds.items():
        for _ in ds:  # fill the cache
            pass
        start = time.perf_counter()
        for _ in ds:
            pass
        pipeline[kind] = images / (time.perf_counter() - start)
    for _ in range(args.epochs + 1):
        for kind, fit_model in models.items():
            start = time.perf_counter()
            fit_model.fit(feeds[kind], epochs=1, verbose=0)
            rates[kind].append(images / (time.perf_counter() - start))
    result = {
        "backbone": args.backbone,
        "image_size": args.size,
        "train_images": images,
        "batch_size": args.batch_size,
        "train_images_per_s": {k: statistics.median(v[1:]) for k, v in rates.items()},
        "epochs_images_per_s": rates,
        "input_pipeline_images_per_s": pipeline,
    }
    result["ratio_augmix_jsd_to_none"] = (
        result["train_images_per_s"]["augmix_jsd"] / result["train_images_per_s"]["none"]
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
