"""What compare, tune and train share: data, hyperparameters, optimizers, callbacks, phases.

A training *phase* (:func:`run_phase`) is one ``fit`` with its own work folder: a
``keras.callbacks.BackupAndRestore`` checkpoint written every epoch (a killed run resumes at
the next epoch, so a preempted node loses at most one), a CSV log appended across restarts,
the best weights on val, early stopping, and a ``done.json`` marker so a restarted run skips
phases that already finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hemaflow import storage
from hemaflow.config import (
    Config,
    ConfigError,
    ConsistencyConfig,
    HeadConfig,
    Optimizer,
    Schedule,
    TrainConfig,
)
from hemaflow.errors import HemaflowError
from hemaflow.modeling import checkpoints
from hemaflow.storage import MANIFEST

log = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)
# Weight decay shrinks kernels only: decaying BatchNorm scales and offsets or biases
# regularises nothing. Patterns over variable names.
NO_WEIGHT_DECAY = ["gamma", "beta", "bias"]
IN_MEMORY_LIMIT_BYTES = 2 << 30


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataInfo:
    """What the model stages need from a TFRecord folder's manifest.json."""

    data_dir: str
    class_names: list[str]
    image_size: int
    counts: dict[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class DataFolderError(HemaflowError, FileNotFoundError, ValueError):
    """A TFRecord folder is missing or its manifest cannot be used."""


def read_data_info(data_dir: str) -> DataInfo:
    """Read and check the manifest of a TFRecord folder written by balance-and-augment."""
    manifest = storage.read_json(
        data_dir,
        MANIFEST,
        "TFRecord folder",
        error=DataFolderError,
        required=("class_names", "image_size"),
    )
    class_names = [str(c) for c in manifest["class_names"]]
    if len(class_names) < 2:
        raise DataFolderError(
            f"{data_dir}: class_names: need at least 2 classes, got {class_names}"
        )
    counts = {}
    for split, value in (manifest.get("counts") or {}).items():
        counts[split] = int(sum(value.values()) if isinstance(value, dict) else sum(value))
    return DataInfo(str(data_dir), class_names, int(manifest["image_size"]), counts)


def split_size(info: DataInfo, split: str) -> int:
    """Records in ``split`` (from the manifest, else by counting), with a clear error if none."""
    from hemaflow.data import tfrecords

    size = info.counts.get(split)
    if size is None:
        size = tfrecords.count_records(info.data_dir, split)
    if size < 1:
        raise DataFolderError(f"{info.data_dir}: split {split!r} is empty")
    return size


def dataset(
    info: DataInfo,
    split: str,
    batch_size: int,
    train: bool = False,
    seed: int = 0,
    max_images: int = 0,
    consistency: ConsistencyConfig | None = None,
):
    """Batches of (uint8 images, soft labels) for ``split``.

    Decoding PNG on every epoch would compete with training for the same few cores, so a
    split that fits in memory is decoded once and cached; the training split is then
    reshuffled from the cache each epoch. ``max_images`` > 0 keeps only the first that many
    records: balance-and-augment writes the training split in a seeded random order, so
    they are a fixed random sample (a budget for comparison and tuning runs). Training
    batches also get a fresh random dihedral view per image every epoch
    (:func:`random_dihedral`). With an ``augmix_jsd`` ``consistency``, each training batch of
    B images becomes [that view; two AugMix views of it] (3B images, B labels), for
    :class:`~hemaflow.modeling.consistency.ConsistencyTrainer`.
    """
    import tensorflow as tf

    from hemaflow.data import tfrecords
    from hemaflow.modeling import consistency as consistency_loss

    size = split_size(info, split)
    ds = tfrecords.read_dataset(
        info.data_dir, split, info.num_classes, info.image_size, batch_size=256, seed=seed
    ).unbatch()
    if 0 < max_images < size:
        ds, size = ds.take(max_images), max_images
    if size * info.image_size**2 * 3 <= IN_MEMORY_LIMIT_BYTES:
        ds = ds.cache()
    if train:
        ds = ds.shuffle(min(size, 16384), seed=seed, reshuffle_each_iteration=True)
    # A known length lets Keras size its epochs (the manifest's counts are checked here).
    batches = tf.data.experimental.assert_cardinality(math.ceil(size / batch_size))
    ds = ds.batch(batch_size).apply(batches)
    if train:
        noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        if consistency_loss.enabled(consistency):

            def views(batch, r):
                clean = random_dihedral(batch[0], tf.stack([r, seed]))
                # The AugMix views start from the same dihedral view, as the paper's start
                # from the flipped, cropped image; their own seed stream.
                pair = tf.stack([r, -1 - tf.cast(seed, tf.int64)])
                return consistency_loss.augmix_views(clean, pair, consistency), batch[1]

        else:

            def views(batch, r):
                return random_dihedral(batch[0], tf.stack([r, seed])), batch[1]

        ds = tf.data.Dataset.zip(ds, noise).map(views, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def random_dihedral(images, seed):
    """Each image of a square batch in one of its 8 flips and 90-degree rotations.

    A smear has no up or left, so all 8 views are the same cell: showing the originals (not
    only the augmented copies) in a new view each epoch costs nothing next to a training
    step. ``seed`` is a stateless seed pair.
    """
    import tensorflow as tf

    bits = tf.random.stateless_uniform([tf.shape(images)[0], 3, 1, 1, 1], seed, 0, 2, tf.int32)
    views = tf.where(bits[:, 0] == 1, tf.transpose(images, [0, 2, 1, 3]), images)
    views = tf.where(bits[:, 1] == 1, tf.reverse(views, [1]), views)
    return tf.where(bits[:, 2] == 1, tf.reverse(views, [2]), views)


# --------------------------------------------------------------------------- hyperparameters


@dataclass(frozen=True)
class Hparams:
    """The tunable training choices (the fields of a hparams.json).

    Each is a field of the config's ``model.head`` or ``train`` section, where its default
    and its check are written: :func:`default_hparams` reads them from there and
    :func:`check_hparams` validates tuned values with the config's own checks.
    """

    dense: list[int]
    dropout: float
    optimizer: str
    learning_rate: float
    fine_tune_learning_rate: float
    schedule: str
    weight_decay: float
    label_smoothing: float
    unfreeze: int


_HEAD_FIELDS = ("dense", "dropout")  # in model.head; the others are in train
_TRAIN_NAMES = {"unfreeze": "unfreeze_layers"}  # Hparams name -> train field, where they differ


def _sections(hp: Hparams, config: Config) -> tuple[HeadConfig, TrainConfig]:
    """The config's head and train sections with ``hp`` laid over them."""
    values = dataclasses.asdict(hp)
    head = dataclasses.replace(config.model.head, **{k: values.pop(k) for k in _HEAD_FIELDS})
    train = {_TRAIN_NAMES.get(k, k): v for k, v in values.items()}
    return head, dataclasses.replace(config.train, **train)


def default_hparams(config: Config) -> Hparams:
    head, train = config.model.head, config.train
    return Hparams(
        **{
            f.name: getattr(head, f.name)
            if f.name in _HEAD_FIELDS
            else getattr(train, _TRAIN_NAMES.get(f.name, f.name))
            for f in dataclasses.fields(Hparams)
        }
    )


def _choice_problems(section: Any) -> list[str]:
    """Fields of a config section whose value is not one of its Literal choices."""
    hints = typing.get_type_hints(type(section))
    problems = []
    for f in dataclasses.fields(section):
        hint, value = hints[f.name], getattr(section, f.name)
        choices = typing.get_args(hint)
        if typing.get_origin(hint) is typing.Literal and value not in choices:
            problems.append(f"{f.name}: {value!r} is not one of {', '.join(map(repr, choices))}")
    return problems


def check_hparams(hp: Hparams, config: Config, where: str) -> None:
    """Raise one ConfigError listing what the config's checks find wrong with ``hp``."""
    problems = [
        problem
        for section in _sections(hp, config)
        for problem in (*_choice_problems(section), *section.validate())
    ]
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))


#: What tune writes and train reads: the best hyperparameters (under ``hparams``).
HPARAMS_FILE = "hparams.json"


def hparams_file(hparams: str) -> str:
    """The JSON file behind ``hparams``: a .json path as given, else a tune folder's hparams.json."""
    if not hparams or hparams.endswith(".json"):
        return hparams
    return storage.join(hparams, HPARAMS_FILE)


def load_hparams(path: str | None, config: Config) -> Hparams:
    """The config's defaults, overridden by a tune folder's or a JSON file's ``hparams``."""
    base = default_hparams(config)
    if not path:
        return base
    path = hparams_file(path)
    try:
        raw = json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    values = raw.get("hparams", raw) if isinstance(raw, dict) else None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of hyperparameters")
    known = {f.name for f in dataclasses.fields(Hparams)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown hyperparameters {unknown} (known: {sorted(known)})")
    hp = dataclasses.replace(base, **values)
    check_hparams(hp, config, str(path))
    return hp


# --------------------------------------------------------------------------- optimization


def make_optimizer(
    name: str,
    learning_rate: float,
    schedule: str = "constant",
    total_steps: int = 0,
    weight_decay: float = 0.0,
):
    """An optimizer by name, with a constant or cosine (with 5% linear warm-up) rate.

    ``weight_decay`` is decoupled (Keras shrinks each kernel by rate x decay per step) and
    applies to AdamW, SGD and Lion; Adam has none (Adam with decay is AdamW).
    """
    import keras

    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer: {name!r} is not one of {', '.join(OPTIMIZERS)}")
    rate: Any = learning_rate
    if schedule == "cosine" and total_steps > 1:
        warmup = max(1, total_steps // 20)
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate * 0.1,
            decay_steps=total_steps - warmup,
            warmup_target=learning_rate,
            warmup_steps=warmup,
            alpha=0.01,
        )
    elif schedule not in SCHEDULES:
        raise ConfigError(f"schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if name == "adam":
        return keras.optimizers.Adam(rate)
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=weight_decay)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(
            rate, momentum=0.9, nesterov=True, weight_decay=weight_decay or None
        )
    else:
        optimizer = keras.optimizers.Lion(rate, weight_decay=weight_decay or None)
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


def compile_model(
    model, optimizer, label_smoothing: float = 0.0, jit_compile: bool | str = "auto"
) -> None:
    """Cross-entropy on soft labels (CutMix/MixUp) with optional label smoothing."""
    import keras

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


# --------------------------------------------------------------------------- callbacks


#: The folder of a compare, tune or train output (and of its work folder) with event files.
TENSORBOARD_DIR = "tensorboard"
SAMPLE_IMAGES = 16


def tensorboard(s: Setup, log_dir: Path, seed: int, val_ds=None):
    """The TensorBoard callback of a fit of ``s`` writing into ``log_dir``.

    It shows the first :data:`SAMPLE_IMAGES` training images with this fit's augmentation;
    with ``val_ds`` it also writes the val confusion matrix when the fit ends.
    """
    import numpy as np

    from hemaflow.modeling import callbacks

    ds = dataset(s.info, "train", SAMPLE_IMAGES, True, seed, max_images=SAMPLE_IMAGES)
    images, labels = next(iter(ds))
    sample = (np.asarray(images), np.asarray(labels))
    return callbacks.TensorBoard(log_dir, s.train_images, s.info.class_names, sample, val_ds)


def publish_tensorboard(log_root: Path, staging: Path) -> None:
    """Copy the event files under ``log_root`` into the output being staged."""
    import shutil

    if Path(log_root).is_dir():
        shutil.copytree(log_root, Path(staging) / TENSORBOARD_DIR, dirs_exist_ok=True)


def read_csv_history(path: Path) -> dict[str, list[float]]:
    """The per-epoch log that CSVLogger appended (across restarts) as columns."""
    import csv

    if not path.exists():
        return {}
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key and value not in (None, ""):
                columns.setdefault(key, []).append(float(value))
    return columns


def run_phase(
    model,
    name: str,
    work_dir: Path,
    train_ds,
    val_ds,
    epochs: int,
    train_images: int,
    patience: int = 0,
    extra_callbacks: list | None = None,
    tensorboard=None,
    store: checkpoints.Store | None = None,
) -> dict[str, Any]:
    """One resumable ``fit`` of ``model`` (compiled) for ``epochs`` epochs in ``work_dir/name``.

    Returns ``{"history": columns, "rates": images/s per epoch, "steady_seconds": seconds per
    epoch with its first steps at the pace of the rest, "resumed_from": epoch}``.
    A phase whose ``done.json`` exists is not rerun: its final weights are loaded instead.
    ``tensorboard`` (a :func:`tensorboard` callback) also gets the val confusion matrix of
    the best weights, the ones the phase keeps. With a ``store`` whose local folder is
    ``work_dir``, the phase folder is pulled from its gs:// mirror first and pushed back
    after every epoch and at the end, so a task restarted on another node resumes too.
    """
    import keras

    from hemaflow.modeling import callbacks as hf_callbacks

    if store is not None:
        store.restore(name)
    folder = Path(work_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "done.json"
    final_weights = folder / "final.weights.h5"
    csv_path = folder / "history.csv"
    if done.exists() and final_weights.exists():
        model.load_weights(final_weights)
        log.info("phase %s: already finished, loaded its weights", name)
        return {**json.loads(done.read_text()), "history": read_csv_history(csv_path)}

    backup = folder / "backup"
    resumed_from = 0
    metadata = backup / "training_metadata.json"
    if metadata.exists():
        resumed_from = int(json.loads(metadata.read_text()).get("epoch", 0))
        log.info("phase %s: resuming from checkpoint at epoch %d", name, resumed_from)
    best = folder / "best.weights.h5"
    earlier = read_csv_history(csv_path).get("val_accuracy", [])
    progress = hf_callbacks.FitProgress(train_images)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup), save_freq="epoch", delete_checkpoint=True),
        keras.callbacks.CSVLogger(str(csv_path), append=True),
        keras.callbacks.ModelCheckpoint(
            str(best),
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=max(earlier) if earlier and best.exists() else None,
        ),
        progress,
        *([tensorboard] if tensorboard is not None else []),
        *(extra_callbacks or []),
    ]
    if patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=patience)
        )
    if store is not None:
        callbacks.append(store.callback(name))  # last: after every writer of this epoch
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=0)
    if best.exists():
        model.load_weights(best)
    model.save_weights(final_weights)
    history = read_csv_history(csv_path)
    if tensorboard is not None:
        tensorboard.write_confusion_matrix(model, val_ds, max(len(history.get("loss", [])) - 1, 0))
    summary = {
        "resumed_from": resumed_from,
        "rates": progress.rates,
        "steady_seconds": progress.steady_seconds,
    }
    storage.write_text_atomic(done, json.dumps(summary))
    if store is not None:
        store.save(name)
    return {**summary, "history": history}


def evaluate_accuracy(model, ds) -> float:
    """Top-1 accuracy against the arg-max of the (soft) labels."""
    import numpy as np

    correct = total = 0
    for images, labels in ds:
        probs = model.predict_on_batch(images)
        correct += int(np.sum(np.argmax(probs, -1) == np.argmax(labels.numpy(), -1)))
        total += int(labels.shape[0])
    if not total:
        raise ValueError("evaluate_accuracy: the split is empty")
    return correct / total


def inference_rate(model, ds, max_batches: int = 20) -> float:
    """Images/s of ``predict_on_batch`` over up to ``max_batches`` batches (after a warm-up)."""
    batches = [images for images, _ in ds.take(max_batches + 1)]
    model.predict_on_batch(batches[0])
    start = time.perf_counter()
    count = 0
    for images in batches[1:] or batches:
        model.predict_on_batch(images)
        count += int(images.shape[0])
    return count / max(time.perf_counter() - start, 1e-9)


def steps_per_epoch(images: int, batch_size: int) -> int:
    return max(1, math.ceil(images / batch_size))


def default_work_dir(out_dir: str, configured: str = "") -> Path:
    """A stable local work folder for checkpoints: configured, or beside ``out_dir``.

    A re-run with the same ``out_dir`` finds the same folder and resumes. A gs://
    ``configured`` base gives the local working copy of that output's prefix under it (see
    :func:`checkpoint_store`). Without one, a gs:// output's folder lives in the local
    cache, which a rescheduled pod does not see.
    """
    if configured:
        # One base folder serves every task of a pipeline: each output gets its own.
        key = checkpoints.task_key(out_dir)
        if storage.is_gcs(configured):
            return checkpoints.working_copy(storage.join(configured, key))
        return Path(configured).expanduser() / key
    if storage.is_gcs(out_dir):
        bucket, name = storage.split_gcs(out_dir)
        return storage.cache_root() / "work" / bucket / name
    final = Path(out_dir).expanduser().resolve()
    return final.with_name(f".{final.name}.work")


def checkpoint_store(out_dir: str, configured: str = "") -> checkpoints.Store:
    """The checkpoint store of ``out_dir``: its work folder, mirrored when ``configured`` is gs://.

    On a cluster the pipeline sets ``configured`` under the task's output URI, so a retry
    of the task (on this node or another) finds the checkpoints and no other task does.
    """
    remote = storage.join(configured, checkpoints.task_key(out_dir))
    return checkpoints.Store(
        default_work_dir(out_dir, configured), remote if storage.is_gcs(configured) else ""
    )


# --------------------------------------------------------------------------- stage setup


@dataclass
class Setup:
    """Everything a model stage decides before building a model."""

    info: DataInfo
    backbone: str
    strategy: Any
    policy: str
    batch_size: int
    pretrained: bool
    train_images: int  # per epoch: the training split, or the budget ``max_train_images``
    jit_compile: bool | str = "auto"


def setup(data_dir: str, backbone: str, config: Config, max_train_images: int = 0) -> Setup:
    """Read the data manifest, pick strategy, dtype policy and global batch for ``backbone``.

    ``max_train_images`` > 0 caps the training images per epoch (see :func:`dataset`).
    """
    import keras

    from hemaflow.modeling import distribute, precision, zoo

    zoo.backbone_spec(backbone)  # an unknown name fails before any data is read
    info = read_data_info(data_dir)
    # Initial weights, dropout masks and trial models follow the config's seed, so the same
    # data and config give the same choices and the same fitted model.
    keras.utils.set_random_seed(config.seed)
    for split in ("train", "val"):
        split_size(info, split)
    strategy = distribute.get_strategy()
    policy = precision.policy_for(backbone, config.model.precision)
    pretrained = config.model.weights != "none" and zoo.is_pretrainable(backbone)
    batch = distribute.global_batch_size(config.model.batch_size, strategy)
    log.info(
        "%s: %d classes at %d px, policy %s, batch %d on %d replica(s), %s",
        backbone,
        info.num_classes,
        info.image_size,
        policy,
        batch,
        strategy.num_replicas_in_sync,
        "pretrained" if pretrained else "from scratch",
    )
    train_images = split_size(info, "train")
    if 0 < max_train_images < train_images:
        train_images = max_train_images
    return Setup(
        info,
        backbone,
        strategy,
        policy,
        batch,
        pretrained,
        train_images,
        config.model.jit_compile,
    )


def build(s: Setup, config: Config, hp: Hparams):
    """The model for ``s`` with ``hp``'s head; create it inside ``s.strategy.scope()``."""
    from hemaflow.modeling import zoo

    return zoo.build_model(
        s.backbone,
        s.info.num_classes,
        s.info.image_size,
        weights=config.model.weights if s.pretrained else "none",
        head=config.model.head,
        policy=s.policy,
        dense=hp.dense,
        dropout=hp.dropout,
        weights_fallback=config.model.weights_fallback,
        colour_constancy=config.model.colour_constancy,
    )


def compile_phase(s: Setup, model, hp: Hparams, learning_rate: float, epochs: int) -> None:
    """(Re)compile ``model`` for a phase of ``epochs`` epochs at peak ``learning_rate``."""
    total = steps_per_epoch(s.train_images, s.batch_size) * epochs
    with s.strategy.scope():
        optimizer = make_optimizer(hp.optimizer, learning_rate, hp.schedule, total, hp.weight_decay)
        compile_model(model, optimizer, hp.label_smoothing, s.jit_compile)


#: The randomized-augmentation copy of val that selection may use beside val.
BMK_VAL = "bmk_val"


def data(s: Setup, seed: int, consistency: ConsistencyConfig | None = None):
    """(train, val, bmk_val or None) datasets at the global batch size.

    ``consistency`` (final training only) adds the AugMix views to the training batches.

    Never test or Bmk: every choice the model stages make sees train and val only, so the
    test figures evaluate reports stay out of sample. A folder written before augment made
    ``bmk_val`` gives None, and selection falls back to val.
    """
    from hemaflow.data import tfrecords

    train_ds = dataset(
        s.info,
        "train",
        s.batch_size,
        train=True,
        seed=seed,
        max_images=s.train_images,
        consistency=consistency,
    )
    val_ds = dataset(s.info, "val", s.batch_size)
    if not tfrecords.has_split(s.info.data_dir, BMK_VAL):
        log.warning(
            "%s: no %s split (written by an older augment): Bmk-val is not scored and "
            "criteria that use it fall back to val_accuracy",
            s.info.data_dir,
            BMK_VAL,
        )
        return train_ds, val_ds, None
    return train_ds, val_ds, dataset(s.info, BMK_VAL, s.batch_size)


def steady_rate(rates: list[float]) -> float:
    """Training images/s without the first epoch (graph tracing, cache filling) if possible."""
    steady = rates[1:] or rates
    return float(sum(steady) / len(steady)) if steady else 0.0
