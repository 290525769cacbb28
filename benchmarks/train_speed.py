"""Training images/s: TFRecord input against in-memory tensors, float32 against bf16, XLA.

For each backbone, dtype policy and XLA setting the same compiled model trains alternately from
``hemaflow.modeling.fitting.dataset`` (the TFRecord pipeline every stage uses) and from numpy
arrays already in memory; the ratio TFRecord/in-memory shows whether the input pipeline
holds the model back (it should be >= 0.9). Epochs alternate so that load from other
processes hits both feeds alike; the median of the timed epochs is reported. ``--xla off on``
adds the XLA-compiled training step (``model.jit_compile``), whose speed-up is the ratio of the
two rows' in-memory rates.

    python benchmarks/train_speed.py --pbc128 ../shared/data/pbc128 --size 64 \
        --backbones small_cnn resnet_mini mobilenet_v3_small --out train_speed.json
    python benchmarks/train_speed.py --data runs/tfr   # an augment stage's TFRecord folder
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


def timed_epoch(model, images: int, *feed, **fit_options) -> float:
    start = time.perf_counter()
    model.fit(*feed, epochs=1, verbose=0, **fit_options)
    return images / (time.perf_counter() - start)


def measure(info, backbone: str, policy: str, batch: int, reps: int, xla: bool = False) -> dict:
    import numpy as np

    from hemaflow.modeling import fitting, zoo

    tfr = fitting.dataset(info, "train", batch, train=True, seed=0)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in tfr], strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    model = zoo.build_model(backbone, info.num_classes, info.image_size, policy=policy)
    fitting.compile_model(model, fitting.make_optimizer("adamw", 1e-3), 0.1, jit_compile=xla)
    model.fit(x[: batch * 2], y[: batch * 2], batch_size=batch, epochs=1, verbose=0)
    model.fit(tfr, epochs=1, verbose=0)  # warm-up: tracing, and the decode cache fills
    rates: dict[str, list[float]] = {"tfrecord": [], "memory": []}
    for _ in range(reps):
        rates["tfrecord"].append(timed_epoch(model, len(x), tfr))
        rates["memory"].append(timed_epoch(model, len(x), x, y, batch_size=batch, shuffle=True))
    result = {
        "backbone": backbone,
        "policy": policy,
        "xla": xla,
        "images": len(x),
        "tfrecord_images_per_s": statistics.median(rates["tfrecord"]),
        "memory_images_per_s": statistics.median(rates["memory"]),
    }
    result["ratio"] = result["tfrecord_images_per_s"] / result["memory_images_per_s"]
    print(
        f"{backbone:20s} {policy:15s} {'xla' if xla else '   '} tfrecord {result['tfrecord_images_per_s']:7.1f}  "
        f"memory {result['memory_images_per_s']:7.1f}  ratio {result['ratio']:.2f}",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a TFRecord folder (hemaflow.data.tfrecords format)")
    parser.add_argument("--pbc128", default=str(REPO.parent / "shared" / "data" / "pbc128"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=80, help="train images per class")
    parser.add_argument(
        "--backbones", nargs="+", default=["small_cnn", "resnet_mini", "mobilenet_v3_small"]
    )
    parser.add_argument(
        "--policies", nargs="+", default=["float32", "mixed_bfloat16"], help="dtype policies"
    )
    parser.add_argument("--xla", nargs="+", choices=["off", "on"], default=["off"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))

    from hemaflow.modeling import fitting, precision

    with tempfile.TemporaryDirectory(prefix="hemaflow-bench-") as tmp:
        data = args.data
        if not data:
            from tests.helpers import write_pbc_tfrecords

            data = str(
                write_pbc_tfrecords(
                    Path(args.pbc128),
                    Path(tmp) / "tfr",
                    args.size,
                    {"train": args.per_class, "val": 2},
                )
            )
        info = fitting.read_data_info(data)
        flags = precision.cpu_flags()
        print(f"CPU native bf16: {precision.cpu_has_fast_bf16(flags)}; {info.image_size} px")
        results = [
            measure(info, b, p, args.batch, args.reps, xla == "on")
            for b in args.backbones
            for p in args.policies
            for xla in args.xla
        ]
        for r in results:
            if r["xla"]:
                plain = next(
                    (
                        q
                        for q in results
                        if not q["xla"]
                        and (q["backbone"], q["policy"]) == (r["backbone"], r["policy"])
                    ),
                    None,
                )
                if plain is None:
                    continue
                r["xla_speedup"] = r["memory_images_per_s"] / plain["memory_images_per_s"]
                print(f"{r['backbone']:20s} {r['policy']:15s} XLA speed-up {r['xla_speedup']:.2f}x")
    summary = {"native_bf16": precision.cpu_has_fast_bf16(flags), "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
