"""Accuracy against inference cost of test-time views (``ensemble.views``), on one trained model.

Loads a Model folder that sees one view (a trained member, or an ensemble exported with
``ensemble.views: 1``) and a Dataset folder, predicts every image of each split in all 8
symmetries of the square once, and prints the accuracy,
error count and log-loss of averaging the first 1, 2, 4 and 8 views, next to the single-view
baseline of the same model in the same run. Inference time grows with the view count; the
accuracy does not have to.

    python benchmarks/test_time_views.py --model runs/accuracy/kfp/*/for-loop-2-*/train/model \\
        --data runs/accuracy/kfp/*/ingest/dataset
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hemaflow.data import labelled

REPO = Path(__file__).resolve().parents[1]
VIEW_COUNTS = (1, 2, 4, 8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Model folder")
    parser.add_argument("--data", required=True, help="a Dataset folder (ingest's output)")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", help="also write the table as JSON here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import numpy as np

    from hemaflow.modeling import inference, loading, metrics
    from hemaflow.modeling.layers import dihedral_view

    model = loading.load_model(args.model)
    rows = []
    for split in args.splits:
        data = labelled.read_split(args.data, split)
        start = time.perf_counter()
        views = np.stack(
            [
                inference.predict_arrays(model, dihedral_view(data.images, v), args.batch)
                for v in range(max(VIEW_COUNTS))
            ]
        )
        per_view_s = (time.perf_counter() - start) / len(views)
        single_errors = max(int((views[0].argmax(axis=1) != data.labels).sum()), 1)
        for count in VIEW_COUNTS:
            probs = views[:count].mean(axis=0)
            errors = int((probs.argmax(axis=1) != data.labels).sum())
            rows.append(
                {
                    "split": split,
                    "views": count,
                    "images": len(data.labels),
                    "accuracy": metrics.accuracy(data.labels, probs.argmax(axis=1)),
                    "errors": errors,
                    "errors_vs_1_view": errors / single_errors,
                    "log_loss": metrics.log_loss(probs, data.labels),
                    "seconds": per_view_s * count,
                }
            )
    print(
        f"{'split':6} {'views':>5} {'accuracy':>9} {'errors':>7} {'x 1 view':>9} "
        f"{'log-loss':>9} {'seconds':>8}"
    )
    for r in rows:
        print(
            f"{r['split']:6} {r['views']:5d} {r['accuracy']:9.4f} {r['errors']:7d} "
            f"{r['errors_vs_1_view']:9.2f} {r['log_loss']:9.4f} {r['seconds']:8.1f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
