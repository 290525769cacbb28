"""Robustness methods side by side on val: clean, own suite, independent benchmark, wall time.

Trains one model per variant with the train stage (the profile's config plus the variant's
overrides) on one augment output folder, then scores each on a fixed sample of its val
split: clean, the own corruption suite (which shares its ops with training augmentation) and
the independent benchmark (albumentations, which training never uses), plainly and with
test-time BatchNorm adaptation. Everything here is val: choosing a method must not see the
test split, which only evaluate scores. The first variant is the baseline; every other row
gives its difference from it, measured in the same run.

    python benchmarks/robustness.py --data runs/aug --out /tmp/robustness \\
        --variant baseline= --variant grey_world=model.colour_constancy=grey_world

``--views 1 2 4`` scores each model also through the ensemble stage's test-time views
(rows NAME@1, NAME@2, NAME@4): what a view buys against the epochs its inference costs.

A variant is NAME=KEY=VALUE[;KEY=VALUE...] (empty after the first "=" for the profile as
it is). Variants that change the augmentation policy need their own augment folder: give
it as the override ``data_dir=DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_VARIANTS = (
    "baseline=",
    "grey_world=model.colour_constancy=grey_world",
    "optical_density=model.colour_constancy=optical_density",
)


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``NAME=KEY=VALUE;KEY=VALUE`` -> (name, overrides, values read as YAML)."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: expected NAME=KEY=VALUE[;KEY=VALUE...]")
    from hemaflow.config import parse_override

    return name, dict(parse_override(item) for item in filter(None, rest.split(";")))


def score(model, split, config, seed: int) -> dict[str, float | str | None]:
    """Clean, own-suite and independent accuracy (plain and BN-adapted) of ``model``."""
    from hemaflow.components.evaluate import corruption_results

    from hemaflow.imaging import corruptions, independent
    from hemaflow.modeling import inference, metrics

    batch = config.evaluate.batch_size
    severities = list(config.evaluate.severities)
    clean = inference.predict_arrays(model, split.images, batch).argmax(axis=1)
    row: dict[str, float | str | None] = {"clean": metrics.accuracy(split.labels, clean)}
    suites = {
        "own": (corruptions.corruption_names(["all"]), corruptions.corrupt),
        "independent": (independent.names(["all"]), independent.corrupt),
    }
    for suite, (names, corrupt) in suites.items():
        start = time.perf_counter()
        results = corruption_results(
            model,
            split.images,
            split.labels,
            split.class_names,
            names,
            severities,
            batch,
            seed,
            bn_adaptation=True,
            corrupt=corrupt,
            desc=suite,
        )
        table = corruptions.CORRUPTIONS if suite == "own" else independent.INDEPENDENT
        families = {n: table[n].family for n in names}
        clean_bacc = metrics.balanced_accuracy(split.labels, clean, len(split.class_names))
        for mode, key in (("plain", suite), ("adapted", f"{suite}_bn")):
            summary = metrics.robustness_summary(clean_bacc, results[mode], families)
            row[key] = summary["corrupted_accuracy"]
            row[f"{key}_worst"] = (
                f"{summary['worst_family']} {summary['worst_family_accuracy']:.3f}"
            )
            row[f"{key}_s5"] = summary["severity5_accuracy"]
        row[f"{suite}_seconds"] = time.perf_counter() - start
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="an augment output folder (TFRecords)")
    parser.add_argument("--out", required=True, help="a folder for the variants' models")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--backbone", default="resnet_mini")
    parser.add_argument("--variant", action="append", help=f"default: {DEFAULT_VARIANTS}")
    parser.add_argument("--sample", type=int, default=800, help="val images scored (0: all)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="for every variant"
    )
    parser.add_argument(
        "--views",
        type=int,
        nargs="+",
        default=[1],
        choices=(1, 2, 4, 8),
        help="also score each model averaged over this many test-time views (as the ensemble "
        "stage exports them); rows NAME@V",
    )
    args = parser.parse_args(argv)

    from hemaflow.components import train
    from hemaflow.components.ensemble import build_ensemble_model

    from hemaflow.config import load_config, parse_override
    from hemaflow.data import labelled
    from hemaflow.modeling import loading

    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    common = dict(parse_override(item) for item in args.set)
    out = Path(args.out)
    rows = []
    for name, overrides in variants:
        data_dir = overrides.pop("data_dir", args.data)
        config = load_config(args.profile, overrides={**common, **overrides})
        model_dir = out / name
        start = time.perf_counter()
        if not (model_dir / "manifest.json").exists():
            train.run(data_dir, args.backbone, "", str(model_dir), config)
        train_seconds = time.perf_counter() - start
        split = labelled.read_split(data_dir, "val", max_images=args.sample, seed=config.seed)
        for views in args.views:
            model = loading.load_model(str(model_dir))
            if views > 1:  # the ensemble stage's graph, around this one member
                model = build_ensemble_model([model], split.image_size, [1.0], 1.0, views)
            label = name if args.views == [1] else f"{name}@{views}"
            row = {"variant": label, "overrides": overrides, "train_seconds": train_seconds}
            row.update(score(model, split, config, config.seed))
            rows.append(row)
            print(f"{label}: {json.dumps(row, default=str)}", flush=True)

    base = rows[0]
    keys = ("clean", "own", "own_bn", "independent", "independent_bn", "independent_s5")
    print(
        f"\nval sample of {args.sample or 'all'} images; accuracy (difference from {base['variant']})"
    )
    print(f"{'variant':18s}" + "".join(f"{k:>22s}" for k in keys) + f"{'train min':>10s}")
    for row in rows:
        cells = "".join(
            f"{row[k]:>14.4f} ({row[k] - base[k]:+.3f})" if row[k] is not None else f"{'-':>22s}"
            for k in keys
        )
        print(f"{row['variant']:18s}{cells}{row['train_seconds'] / 60:10.1f}")
    print("\nworst family (independent, plain / BN-adapted):")
    for row in rows:
        print(
            f"  {row['variant']:18s} {row['independent_worst']:28s} {row['independent_bn_worst']}"
        )
    (out / "robustness.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
