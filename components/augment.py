"""Stage 2, balance-and-augment: a Dataset folder in, sharded GZIP TFRecords out (Apache Beam).

What the TFRecord folder holds, per split:

- ``train``: every original training image (kept unaugmented, so the clean distribution is
  always part of training), plus augmented images drawn from each class until every class
  holds ``target x (1 + copies)`` images, where ``target`` is the majority class count (or
  ``augment.balance_to``; a class already above it keeps all its originals and is not cut).
  So classes are balanced by oversampling with augmentation, not by class weights, and
  ``copies`` adds that many augmented versions per image of the balanced set. When
  ``augment.mix.kind`` is not ``none``, ``target`` further images per class go through the
  policy and then CutMix/MixUp with a partner from the same batch, with soft labels. Records
  are shuffled deterministically (ordered by a hash of seed and source id) across shards.
- ``val``, ``test``: the Dataset's images unaugmented, in order (pixel-identical).
- ``bmk``: the test split passed once through ``augment.bmk_policy``, a randomized benchmark
  that only evaluate reads.
- ``bmk_val``: the val split passed once through the same policy ("Bmk-val"), which compare
  may rank on, so no choice ever sees test images.

Work is a Beam pipeline (DirectRunner by default, run in process without Beam's Prism download,
see :mod:`hemaflow.beam`; ``augment.runner`` and ``augment.runner_options`` go to
``PipelineOptions``): the driver plans batches of up to
``augment.batch_size`` rows, one DoFn call augments and encodes a whole batch, and shards are
written after a GroupByKey, each sorted, so the same Dataset and seed give the same bytes.
Seeds per batch come from the stage seed, the split and the batch index. With a distributed
runner, workers write the shards under a temporary ``gs://`` prefix beside ``out_dir`` (which
must then be ``gs://``) and the driver gathers them into the published artifact.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemaflow import storage
from hemaflow.beam import pipeline_options as beam_options
from hemaflow.config import AugmentConfig, Config
from hemaflow.data import dataset, tfrecords
from hemaflow.errors import StageError
from hemaflow.modeling.fitting import BMK_VAL
from hemaflow.reporting import plots

log = logging.getLogger("hemaflow.augment")

STATS_DIR = "_shard_stats"


# --------------------------------------------------------------------------- planning (pure)


@dataclass(frozen=True)
class Batch:
    """One unit of work: rows of a source split processed in one DoFn call."""

    split: str  # output split: train, val, test, bmk or bmk_val
    kind: str  # original, augmented, mixed or bmk
    index: int  # batch number within (split, kind): drives the batch seed
    source: str  # the Dataset split the rows index into
    rows: tuple[int, ...]
    copies: tuple[int, ...]  # per row: which augmented copy of that source image this is


def balance_plan(
    labels: np.ndarray, num_classes: int, balance_to: int | str, copies: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which source rows get augmented copies, and which go through mixing.

    Returns (augmented rows, copy number per augmented row, mixed rows). Per class ``c`` with
    ``n_c`` originals: ``max(target, n_c) x (1 + copies) - n_c`` augmented rows cycling through a
    seeded permutation of the class's images, and ``max(target, n_c)`` rows for mixing.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    if len(counts) > num_classes:
        raise StageError(f"labels go up to {len(counts) - 1} but there are {num_classes} classes")
    target = int(counts.max()) if balance_to == "max" else int(balance_to)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xBA1A])
    aug_rows, aug_copy, mix_rows = [], [], []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            raise StageError(
                f"class index {c} has no training images; balancing needs at least one per class"
            )
        order = members[rng.permutation(len(members))]
        goal = max(target, len(members))
        extra = goal * (1 + copies) - len(members)
        picks = np.arange(extra)
        aug_rows.append(order[picks % len(order)])
        aug_copy.append(1 + picks // len(order))
        mix_rows.append(order[np.arange(goal) % len(order)])
    mixed = np.concatenate(mix_rows)
    mixed = mixed[rng.permutation(len(mixed))]  # partners in a batch come from any class
    return np.concatenate(aug_rows), np.concatenate(aug_copy), mixed


def plan_batches(
    splits: dict[str, dataset.Split], num_classes: int, aug: AugmentConfig, seed: int
) -> list[Batch]:
    """Every batch of the stage, in a fixed order."""
    size = aug.batch_size
    batches: list[Batch] = []

    def add(split: str, kind: str, source: str, rows: np.ndarray, copies: np.ndarray) -> None:
        for i, start in enumerate(range(0, len(rows), size)):
            chunk = slice(start, start + size)
            batches.append(
                Batch(
                    split,
                    kind,
                    i,
                    source,
                    tuple(int(r) for r in rows[chunk]),
                    tuple(int(c) for c in copies[chunk]),
                )
            )

    train = splits["train"]
    originals = np.arange(len(train))
    add("train", "original", "train", originals, np.zeros_like(originals))
    aug_rows, aug_copy, mix_rows = balance_plan(
        train.labels, num_classes, aug.balance_to, aug.copies, seed
    )
    add("train", "augmented", "train", aug_rows, aug_copy)
    if aug.mix.kind != "none":
        add("train", "mixed", "train", mix_rows, np.ones_like(mix_rows))
    for name in ("val", "test"):
        rows = np.arange(len(splits[name]))
        add(name, "original", name, rows, np.zeros_like(rows))
    for name, source in (("bmk", "test"), (BMK_VAL, "val")):
        rows = np.arange(len(splits[source]))
        add(name, "bmk", source, rows, np.ones_like(rows))
    return batches


def shard_count(records: int, shards: int) -> int:
    """No more shards than records, at least one."""
    return max(1, min(shards, records))


def record_key(seed: int, split: str, source_id: str, position: int) -> int:
    """Sort key of a record: a seeded hash for train (a deterministic shuffle), else the row."""
    if split != "train":
        return position
    digest = hashlib.blake2b(f"{seed}:{source_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# --------------------------------------------------------------------------- Dataset checks


def load_dataset(dataset_dir: str) -> tuple[dict[str, Any], dict[str, dataset.Split]]:
    """The manifest and the three splits, checked against each other.

    Cached per process on the manifest's content (which holds every file's sha256), so the
    driver and the DoFns share one copy, and a Dataset rewritten in place is read afresh.
    """
    if not storage.is_gcs(dataset_dir) and not Path(dataset_dir).expanduser().is_dir():
        raise dataset.DatasetError(f"{dataset_dir}: no such Dataset folder")
    manifest = dataset.read_manifest(dataset_dir)
    return _load_checked(dataset_dir, json.dumps(manifest, sort_keys=True))


@functools.lru_cache(maxsize=2)
def _load_checked(
    dataset_dir: str, manifest_text: str
) -> tuple[dict[str, Any], dict[str, dataset.Split]]:
    manifest = json.loads(manifest_text)
    class_names = list(manifest["class_names"])
    size = int(manifest["image_size"])
    splits = {}
    for name in dataset.DATA_SPLITS:
        try:
            split = dataset.load_split(dataset_dir, name)
        except storage.StorageError as exc:
            raise dataset.DatasetError(f"{dataset_dir}: split file {name}.npz is missing") from exc
        check_split(split, name, class_names, size, manifest, dataset_dir)
        splits[name] = split
    return manifest, splits


def check_split(
    split: dataset.Split,
    name: str,
    class_names: list[str],
    size: int,
    manifest: dict[str, Any],
    where: str,
) -> None:
    """Raise a DatasetError naming the split and field when data and manifest disagree."""
    file = f"{where}/{name}.npz"
    images, labels = split.images, split.labels
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise dataset.DatasetError(
            f"{file}: images are {images.dtype} {images.shape}, but manifest.json says "
            f"image_size {size} (expected uint8 N x {size} x {size} x 3)"
        )
    if not len(images) == len(labels) == len(split.ids):
        raise dataset.DatasetError(
            f"{file}: {len(images)} images, {len(labels)} labels and {len(split.ids)} ids"
        )
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if len(bad):
        raise dataset.DatasetError(
            f"{file}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
            f"0..{len(class_names) - 1} ({len(class_names)} class_names in manifest.json)"
        )
    expected = manifest.get("counts", {}).get(name)
    if isinstance(expected, dict):
        found = np.bincount(labels, minlength=len(class_names))
        for c, cname in enumerate(class_names):
            if int(expected.get(cname, 0)) != int(found[c]):
                raise dataset.DatasetError(
                    f"{file}: {int(found[c])} images of class '{cname}', but manifest.json "
                    f"counts.{name}.{cname} says {expected.get(cname, 0)}"
                )


# --------------------------------------------------------------------------- Beam pieces


LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "PrismRunner")


def write_root(runner: str, out_dir: str) -> str | None:
    """Where Beam workers write shards: None for a local runner (the local staging folder).

    Workers of a distributed runner (Dataflow, Flink, Spark) cannot see the driver's disk, so
    they write under a temporary ``gs://`` prefix beside ``out_dir`` and the driver gathers
    the shards into the staged artifact, which is then published as usual.
    """
    if runner in LOCAL_RUNNERS:
        return None
    if not storage.is_gcs(out_dir):
        raise StageError(
            f"augment.runner {runner} runs on remote workers, which cannot write to the local "
            f"folder {out_dir}; give a gs:// output folder"
        )
    return f"{out_dir.rstrip('/')}.beam-tmp-{uuid.uuid4().hex[:8]}"


def gather_shards(source_root: str, folder: Path) -> None:
    """Copy what the workers wrote under ``source_root`` into ``folder``, then delete it."""
    import tensorflow as tf

    for directory, _, names in tf.io.gfile.walk(source_root):
        relative = directory[len(source_root) :].lstrip("/")
        target = folder / relative
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            tf.io.gfile.copy(f"{directory.rstrip('/')}/{name}", str(target / name), overwrite=True)
    tf.io.gfile.rmtree(source_root)


def pipeline_options(aug: AugmentConfig):
    """Beam PipelineOptions from ``augment.runner`` and ``augment.runner_options``."""
    return beam_options(aug.runner, aug.runner_options)


_TICKERS: dict[str, Iterator[int]] = {}
_AUGMENTERS: dict[str, dict[str, Any]] = {}


def augmenters(aug: AugmentConfig) -> dict[str, Any]:
    """The policy, Bmk policy and mixer, built once per process and configuration.

    Beam may hand each bundle its own copy of a DoFn; sharing the built layers keeps their
    traced graphs too, instead of tracing again per copy.
    """
    from hemaflow.imaging.policy import Mixer, build_augmenter

    key = json.dumps(dataclasses.asdict(aug), sort_keys=True, default=str)
    if key not in _AUGMENTERS:
        _AUGMENTERS[key] = {
            # Reseeding a layer and calling it must not interleave between threads
            # (direct_running_mode=multi_threading): one batch at a time per process.
            "lock": threading.Lock(),
            "policy": build_augmenter(aug.policy),
            "bmk": build_augmenter(aug.bmk_policy),
            "mixer": Mixer(aug.mix) if aug.mix.kind != "none" else None,
        }
    return _AUGMENTERS[key]


def _tick(run_id: str, total: int) -> None:
    """Advance this run's progress bar by one batch (a bar per process)."""
    from hemaflow.progress import progress

    if run_id not in _TICKERS:
        _TICKERS[run_id] = iter(progress(range(total), total=total, desc="augment batches"))
    next(_TICKERS[run_id], None)


PNG_COMPRESSION = 1
"""zlib level of the PNGs in the records: on pbc128 at 96 px level 1 encodes 2x faster than
the default (6) for 10% more bytes, and the shards are GZIP-compressed on top."""


def encode_pngs(images: np.ndarray) -> list[bytes]:
    """PNG bytes of each image of a uint8 batch, encoded in one TF call."""
    import tensorflow as tf

    encoded = tf.map_fn(
        lambda image: tf.io.encode_png(image, compression=PNG_COMPRESSION),
        tf.constant(images),
        fn_output_signature=tf.string,
    )
    return list(encoded.numpy())


class ProcessBatch:
    """Beam DoFn body: augment (or not) and encode one Batch into keyed records."""

    def __init__(self, dataset_dir: str, config: Config, shards: dict[str, int], total: int):
        self.dataset_dir = dataset_dir
        self.config = config
        self.shards = shards
        self.total = total
        self.run_id = f"{dataset_dir}:{config.seed}:{time.time_ns()}"
        self._state: dict[str, Any] | None = None

    def _setup(self) -> dict[str, Any]:
        if self._state is None:
            manifest, splits = load_dataset(self.dataset_dir)
            self._state = {
                "splits": splits,
                "num_classes": len(manifest["class_names"]),
                **augmenters(self.config.augment),
            }
        return self._state

    def _augment(self, batch: Batch, state: dict[str, Any], images, soft, ids, seed: int):
        """The batch's images, soft labels and record ids after its kind of augmentation."""
        if batch.kind == "augmented":
            images = state["policy"](images, seed)
            ids = [f"{i}#aug{c}" for i, c in zip(ids, batch.copies, strict=True)]
        elif batch.kind == "mixed":
            images = state["policy"](images, seed)
            images, soft, partner = state["mixer"](images, soft, seed ^ 0x5EED)
            ids = [
                f"{i}#{self.config.augment.mix.kind}+{ids[p]}"
                for i, p in zip(ids, partner, strict=True)
            ]
        elif batch.kind == "bmk":
            images = state["bmk"](images, seed)
            ids = [f"{i}#bmk" for i in ids]
        return images, soft, ids

    def __call__(self, batch: Batch) -> Iterator[tuple[tuple[str, int], tuple[int, bytes, int]]]:

        from hemaflow.imaging.policy import batch_seed, one_hot

        state = self._setup()
        source = state["splits"][batch.source]
        rows = np.asarray(batch.rows, dtype=np.int64)
        images = source.images[rows]
        ids = [str(i) for i in source.ids[rows]]
        soft = one_hot(source.labels[rows], state["num_classes"])
        seed = batch_seed(self.config.seed, f"{batch.split}/{batch.kind}", batch.index)
        with state["lock"]:
            images, soft, ids = self._augment(batch, state, images, soft, ids, seed)
        pngs = encode_pngs(images)
        shards = self.shards[batch.split]
        for j, row in enumerate(rows):
            position = int(row)
            record = tfrecords.encode_example(images[j], soft[j], ids[j], png=pngs[j])
            key = record_key(self.config.seed, batch.split, ids[j], position)
            shard = key % shards
            yield (batch.split, shard), (key, record, int(np.argmax(soft[j])))
        _tick(self.run_id, self.total)


class WriteShard:
    """Beam DoFn body: write one shard's records in key order, then its per-class counts."""

    def __init__(self, out_dir: str, shards: dict[str, int], num_classes: int):
        self.out_dir = out_dir
        self.shards = shards
        self.num_classes = num_classes

    def __call__(self, item: tuple[tuple[str, int], Any]) -> Iterator[dict[str, Any]]:
        import tensorflow as tf

        (split, shard), values = item
        ordered = sorted(values, key=lambda v: (v[0], v[1]))
        name = tfrecords.shard_name(split, shard, self.shards[split])
        path = storage.join(self.out_dir, name)
        options = tf.io.TFRecordOptions(compression_type=tfrecords.COMPRESSION)
        with tf.io.TFRecordWriter(path, options) as writer:
            for _, record, _ in ordered:
                writer.write(record)
        counts = np.bincount([v[2] for v in ordered], minlength=self.num_classes)
        stats = {"split": split, "shard": name, "records": len(ordered), "counts": counts.tolist()}
        stats_path = storage.join(self.out_dir, STATS_DIR, f"{name}.json")
        tf.io.gfile.makedirs(os.path.dirname(stats_path))
        with tf.io.gfile.GFile(stats_path, "w") as handle:
            handle.write(json.dumps(stats))
        yield stats


def run_beam(
    batches: list[Batch],
    dataset_dir: str,
    folder: str,
    config: Config,
    shards: dict[str, int],
    classes: int,
) -> None:
    """Build and run the Beam pipeline that writes every shard into ``folder``."""
    import apache_beam as beam

    # Beam logs every string annotation it cannot resolve at INFO; that is noise here.
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)
    process = ProcessBatch(dataset_dir, config, shards, len(batches))
    write = WriteShard(folder, shards, classes)
    with beam.Pipeline(options=pipeline_options(config.augment)) as pipeline:
        _ = (
            pipeline
            | "Batches" >> beam.Create(batches, reshuffle=False)
            | "AugmentAndEncode" >> beam.FlatMap(process)
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.FlatMap(write)
        )
    # Every batch is done: run the bar to its end so it closes and prints its final state.
    for _ in _TICKERS.pop(process.run_id, iter(())):
        pass


# --------------------------------------------------------------------------- the stage


def run(dataset_dir: str, out_dir: str, config: Config) -> dict:
    """Balance, augment and write the Dataset at ``dataset_dir`` as TFRecords in ``out_dir``."""
    storage.check_output(out_dir, inputs=[dataset_dir])
    dataset_dir = str(dataset_dir)
    if not storage.is_gcs(dataset_dir):
        dataset_dir = str(Path(dataset_dir).expanduser().resolve())
    manifest, splits = load_dataset(dataset_dir)
    class_names = list(manifest["class_names"])
    size = int(manifest["image_size"])
    aug = config.augment
    batches = plan_batches(splits, len(class_names), aug, config.seed)
    records = dict.fromkeys((*tfrecords.SPLITS, BMK_VAL), 0)
    composition = dict.fromkeys(("original", "augmented", "mixed"), 0)
    for b in batches:
        records[b.split] += len(b.rows)
        if b.split == "train":
            composition[b.kind] += len(b.rows)
    shards = {
        s: shard_count(n, aug.shards if s == "train" else max(1, aug.shards // 2))
        for s, n in records.items()
    }
    log.info(
        "balance-and-augment: %d batches, %s records, runner %s",
        len(batches),
        records,
        aug.runner,
    )
    started = time.perf_counter()
    remote = write_root(aug.runner, str(out_dir))
    with storage.artifact_dir(out_dir) as folder:
        run_beam(batches, dataset_dir, remote or str(folder), config, shards, len(class_names))
        if remote:
            gather_shards(remote, folder)
        elapsed = time.perf_counter() - started
        counts, shard_files = _collect_stats(folder, class_names, shards)
        for split, expected in records.items():
            found = sum(counts[split].values())
            if found != expected:
                raise RuntimeError(f"{split}: wrote {found} records, planned {expected}")
        before = {name: _class_counts(s.labels, class_names) for name, s in splits.items()}
        body = {
            "kind": "tfrecords",
            "class_names": class_names,
            "image_size": size,
            "counts": counts,
            "totals": records,
            "train_composition": composition,
            "source_counts": before,
            "shards": shard_files,
            "compression": tfrecords.COMPRESSION,
            "policy": dataclasses.asdict(aug.policy),
            "bmk_policy": dataclasses.asdict(aug.bmk_policy),
            "mix": dataclasses.asdict(aug.mix),
            "balance_to": aug.balance_to,
            "copies": aug.copies,
            "seed": config.seed,
            "synthetic": bool(manifest.get("synthetic", False)),
            "dataset": {"path": dataset_dir, "source": manifest.get("source")},
            "runner": aug.runner,
        }
        dataset.write_manifest(folder, body)
        total = sum(records.values())
        metrics = {
            "out_dir": str(out_dir),
            "counts": counts,
            "totals": records,
            "train_composition": composition,
            "shards": {s: len(f) for s, f in shard_files.items()},
            "seconds": round(elapsed, 2),
            "images_per_s": round(total / elapsed, 1) if elapsed > 0 else None,
            "synthetic": body["synthetic"],
        }
        storage.write_text_atomic(folder / "metrics.json", json.dumps(metrics, indent=2))
        build_report(splits, class_names, before, counts, config, body["synthetic"]).write(folder)
    log.info("wrote %d records to %s in %.1f s", total, out_dir, elapsed)
    return metrics


# --------------------------------------------------------------------------- report

REPORT_SAMPLES = 8


def build_report(
    splits: dict[str, dataset.Split],
    class_names: list[str],
    before: dict[str, dict[str, int]],
    after: dict[str, dict[str, int]],
    config: Config,
    synthetic: bool,
):
    """The stage's HTML page: the policy on real samples, mixing, Bmk, and class balance."""
    from hemaflow.imaging.policy import FAMILIES, one_hot
    from hemaflow.reporting import report

    aug = config.augment
    tools = augmenters(aug)
    page = report.Report("hemaflow balance-and-augment", synthetic=synthetic)
    train = splits["train"]
    rows = _one_per_class(train.labels, len(class_names), REPORT_SAMPLES)
    originals = train.images[rows]
    names = [class_names[int(c)] for c in train.labels[rows]]
    policy = tools["policy"]

    page.heading("Augmentation policy")
    page.paragraph(
        "Each family is applied to each image with probability p at a random magnitude up to "
        "its strength. Below: the originals (top row), each family forced on (p = 1) at the "
        "configured strength, and two draws of the full policy."
    )
    page.table(
        [
            {
                "family": f,
                "p": getattr(aug.policy, f).p,
                "strength": getattr(aug.policy, f).strength,
            }
            for f in FAMILIES
        ]
    )
    grid, titles = [originals], [[f"original {n}" for n in names]]
    for i, family in enumerate(FAMILIES):
        grid.append(policy.apply(originals, config.seed + i, only=family, force=True))
        titles.append([family] * len(rows))
    for draw in range(2):
        grid.append(policy(originals, config.seed + 100 + draw))
        titles.append([f"policy #{draw + 1}"] * len(rows))
    page.figure(
        "augmentations.png",
        plots.image_grid(np.concatenate(grid), sum(titles, []), columns=len(rows)),
        "Rows: original, then one row per family (forced on), then the full policy.",
    )

    if aug.mix.kind != "none":
        mixed, soft, _ = tools["mixer"](
            originals, one_hot(train.labels[rows], len(class_names)), config.seed
        )
        labels = [_top2(s, class_names) for s in soft]
        page.heading(f"{aug.mix.kind} (soft labels)")
        page.figure(
            "mixing.png",
            plots.image_grid(np.concatenate([originals, mixed]), names + labels, columns=len(rows)),
            f"Top: originals; bottom: {aug.mix.kind} within the batch, titled with the soft label.",
        )

    test = splits["test"]
    test_rows = _one_per_class(test.labels, len(class_names), REPORT_SAMPLES)
    bmk = tools["bmk"](test.images[test_rows], config.seed)
    page.heading("Bmk: the test split through the benchmark policy")
    page.paragraph(
        "Bmk is for evaluate only. bmk_val, the val split through the same policy, is what "
        "compare may rank backbones on."
    )
    page.figure(
        "bmk.png",
        plots.image_grid(
            np.concatenate([test.images[test_rows], bmk]),
            ["test"] * len(test_rows) + ["bmk"] * len(test_rows),
            columns=len(test_rows),
        ),
    )

    page.heading("Class balance")
    page.figure(
        "balance_before.png",
        plots.bar_chart(class_names, list(before["train"].values()), "train before (Dataset)"),
    )
    page.figure(
        "balance_after.png",
        plots.bar_chart(
            class_names, list(after["train"].values()), "train after (by arg-max label)"
        ),
    )
    page.table(
        [
            {
                "class": c,
                "train before": before["train"][c],
                "train after": after["train"][c],
                "val": after["val"][c],
                "test": after["test"][c],
                "bmk": after["bmk"][c],
                "bmk_val": after[BMK_VAL][c],
            }
            for c in class_names
        ]
    )
    page.heading("Configuration")
    page.json_block(dataclasses.asdict(aug))
    return page


def _one_per_class(labels: np.ndarray, num_classes: int, count: int) -> np.ndarray:
    """Up to ``count`` row indices, taking classes in turn so the sample shows all of them."""
    picks: list[int] = []
    pools = [list(np.flatnonzero(labels == c)) for c in range(num_classes)]
    while len(picks) < min(count, len(labels)):
        for pool in pools:
            if pool and len(picks) < count:
                picks.append(int(pool.pop(0)))
    return np.asarray(picks, dtype=np.int64)


def _top2(soft: np.ndarray, class_names: list[str]) -> str:
    order = np.argsort(soft)[::-1][:2]
    return " ".join(f"{class_names[i][:5]} {soft[i]:.2f}" for i in order if soft[i] > 0)


def _class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    found = np.bincount(labels, minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, found, strict=True)}


def _collect_stats(
    folder: Path, class_names: list[str], shards: dict[str, int]
) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
    """Per-split class counts from the shard writers; fills in empty shards; removes the stats."""
    import shutil

    counts = {s: dict.fromkeys(class_names, 0) for s in shards}
    stats_dir = folder / STATS_DIR
    for path in sorted(stats_dir.glob("*.json")) if stats_dir.is_dir() else []:
        stats = json.loads(path.read_text())
        for name, n in zip(class_names, stats["counts"], strict=True):
            counts[stats["split"]][name] += int(n)
    shutil.rmtree(stats_dir, ignore_errors=True)
    files: dict[str, list[str]] = {}
    for split, n in shards.items():
        names = [tfrecords.shard_name(split, i, n) for i in range(n)]
        missing = [name for name in names if not (folder / name).exists()]
        if missing:  # a shard no record hashed to: write it empty so the set is complete
            import tensorflow as tf

            options = tf.io.TFRecordOptions(compression_type=tfrecords.COMPRESSION)
            for name in missing:
                tf.io.TFRecordWriter(str(folder / name), options).close()
        files[split] = names
    return counts, files
