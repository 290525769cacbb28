"""The one validated configuration of hemaflow, with its profiles.

A profile is a YAML file under ``hemaflow/profiles``, or in a folder of site profiles named by
the ``HEMAFLOW_PROFILES`` environment variable (several separated by ``os.pathsep``), which
is searched first; a user file may name a profile to start from (``profile: cpu``) and
override any key. Everything is checked on load: an unknown key, a wrong type or an
impossible value raises :class:`ConfigError` naming the key and the file. Stages receive the
typed sections below, never raw dictionaries.

A resolved config travels as JSON (:meth:`Config.to_json`, :func:`from_json`): the whole
tree, so whoever receives it rebuilds the same config without reading any profile.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hemaflow.errors import HemaflowError

PROFILE_DIR = Path(__file__).parent / "profiles"
PROFILES_ENV = "HEMAFLOW_PROFILES"
CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)


#: Choices that several sections share, spelled once; code reads them with typing.get_args.
Optimizer = Literal["adam", "adamw", "sgd", "lion"]
Schedule = Literal["constant", "cosine"]
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
Severity = Literal[1, 2, 3, 4, 5]
SEVERITIES: tuple[int, ...] = typing.get_args(Severity)
#: Backbone ranking: val, val through the Bmk policy ("Bmk-val"), or their mean. Never test
#: or Bmk, which evaluate reports on.
Criterion = Literal["val_accuracy", "bmk_val_accuracy", "mean_accuracy"]


class ConfigError(HemaflowError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or impossible."""


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class SplitConfig:
    val: float = 0.15
    test: float = 0.15

    def validate(self) -> list[str]:
        errors = []
        for name in ("val", "test"):
            if not 0.0 < getattr(self, name) < 1.0:
                errors.append(f"{name}: must be between 0 and 1 (exclusive)")
        if self.val + self.test >= 1.0:
            errors.append("val + test: must leave images for training (sum < 1)")
        return errors


@dataclass(frozen=True)
class DropConfig:
    """Which findings of ingest remove images (everything dropped is listed with its reason)."""

    exact_duplicates: bool = True
    near_duplicates: bool = False
    label_conflicts: bool = True
    outliers: bool = True


@dataclass(frozen=True)
class DataConfig:
    source: str = "default"
    image_size: int = 64
    split: SplitConfig = field(default_factory=SplitConfig)
    drop: DropConfig = field(default_factory=DropConfig)
    on_bad_image: Literal["error", "skip"] = "error"
    near_duplicate_distance: int = 4
    outlier_threshold: float = 6.0
    synthetic_per_class: int = 60
    cache_dir: str = ""  # downloads (bloodmnist:SIZE); "" = storage.cache_root()
    # At most this many images of each class in all (0: all), cut after the stratified
    # split, each split keeping its share: a quick run on a large source (``smoke``).
    max_per_class: int = 0

    def validate(self) -> list[str]:
        errors = []
        if not 16 <= self.image_size <= 1024:
            errors.append("image_size: must be between 16 and 1024")
        if not 0 <= self.near_duplicate_distance <= 64:
            errors.append(
                "near_duplicate_distance: must be between 0 and 64 (bits of a 64-bit hash)"
            )
        if self.outlier_threshold <= 0:
            errors.append("outlier_threshold: must be positive")
        if self.synthetic_per_class < 4:
            errors.append("synthetic_per_class: must be at least 4 (one per split and more)")
        if self.max_per_class != 0 and self.max_per_class < 3:
            errors.append("max_per_class: must be 0 (all) or at least 3 (one per split)")
        return errors


@dataclass(frozen=True)
class AugFamily:
    """One augmentation family: applied to an image with probability ``p`` at ``strength``.

    ``strength`` is on a common 0-1 scale that each family maps to its own parameters.
    """

    p: float = 0.0
    strength: float = 0.5

    def validate(self) -> list[str]:
        errors = []
        if not 0.0 <= self.p <= 1.0:
            errors.append("p: must be a probability in [0, 1]")
        if not 0.0 <= self.strength <= 1.0:
            errors.append("strength: must be in [0, 1]")
        return errors


@dataclass(frozen=True)
class AugmentPolicy:
    geometric: AugFamily = field(default_factory=lambda: AugFamily(1.0, 0.5))
    chromatic: AugFamily = field(default_factory=lambda: AugFamily(0.8, 0.4))
    stain: AugFamily = field(default_factory=lambda: AugFamily(0.5, 0.4))
    blur: AugFamily = field(default_factory=lambda: AugFamily(0.2, 0.4))
    noise: AugFamily = field(default_factory=lambda: AugFamily(0.2, 0.4))
    jpeg: AugFamily = field(default_factory=lambda: AugFamily(0.1, 0.4))
    pixelate: AugFamily = field(default_factory=lambda: AugFamily(0.1, 0.4))
    artifacts: AugFamily = field(default_factory=lambda: AugFamily(0.2, 0.4))
    erasing: AugFamily = field(default_factory=lambda: AugFamily(0.1, 0.3))
    randaugment: AugFamily = field(default_factory=lambda: AugFamily(0.0, 0.3))
    augmix: AugFamily = field(default_factory=lambda: AugFamily(0.0, 0.3))


@dataclass(frozen=True)
class MixConfig:
    kind: Literal["cutmix", "mixup", "none"] = "cutmix"
    alpha: float = 1.0

    def validate(self) -> list[str]:
        return ["alpha: must be positive"] if self.alpha <= 0 else []


@dataclass(frozen=True)
class AugmentConfig:
    balance_to: int | Literal["max"] = "max"
    copies: int = 1
    mix: MixConfig = field(default_factory=MixConfig)
    policy: AugmentPolicy = field(default_factory=AugmentPolicy)
    bmk_policy: AugmentPolicy = field(
        default_factory=lambda: AugmentPolicy(
            geometric=AugFamily(1.0, 0.6),
            chromatic=AugFamily(1.0, 0.5),
            stain=AugFamily(0.7, 0.5),
            blur=AugFamily(0.4, 0.5),
            noise=AugFamily(0.4, 0.5),
            jpeg=AugFamily(0.3, 0.5),
            pixelate=AugFamily(0.2, 0.5),
            artifacts=AugFamily(0.4, 0.5),
        )
    )
    shards: int = 4
    batch_size: int = 128
    # Beam runner for augment and batch inference; DirectRunner runs in process (never the
    # Prism download, see hemaflow.beam), any other name goes to Beam as given.
    runner: str = "DirectRunner"
    runner_options: list[str] = field(default_factory=list)

    def validate(self) -> list[str]:
        errors = []
        if self.balance_to != "max" and (
            not isinstance(self.balance_to, int) or self.balance_to < 1
        ):
            errors.append("balance_to: must be 'max' or a positive image count")
        if self.copies < 0:
            errors.append("copies: must be 0 or more")
        if self.shards < 1:
            errors.append("shards: must be at least 1")
        if self.batch_size < 1:
            errors.append("batch_size: must be at least 1")
        return errors


@dataclass(frozen=True)
class HeadConfig:
    dense: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.3
    pooling: Literal["avg", "max"] = "avg"

    def validate(self) -> list[str]:
        errors = []
        if any(units < 1 for units in self.dense):
            errors.append("dense: every layer needs at least 1 unit")
        if not 0.0 <= self.dropout < 1.0:
            errors.append("dropout: must be in [0, 1)")
        return errors


@dataclass(frozen=True)
class ModelConfig:
    backbones: list[str] = field(default_factory=lambda: ["small_cnn", "resnet_mini"])
    # "none", "imagenet" (Keras downloads in each pod), one weights file (.h5/.keras, one
    # backbone), or a mirror: a folder or gs:// prefix with each backbone's file under Keras's
    # own name, filled by `hemaflow weights fetch` (for clusters without internet).
    weights: str = "none"
    # Where pretrained weights cannot be loaded: "error" (always, outside a preflight) or
    # "random", which initialises that backbone randomly and says so in every report; only
    # ``smoke`` sets it, so that a preflight runs without a network or a mirror.
    weights_fallback: Literal["error", "random"] = "error"
    head: HeadConfig = field(default_factory=HeadConfig)
    precision: Precision = "auto"
    batch_size: int = 64
    # XLA for the training step; "auto" is Keras's choice (on with a GPU, off on a CPU).
    jit_compile: bool | Literal["auto"] = "auto"
    # Per-image colour normalisation, a layer inside the saved model (so serving does it too):
    # "grey_world" divides each channel by its image mean (removes a white-balance or lamp
    # colour cast), "optical_density" divides each channel's optical density by its image
    # mean (removes a stain-intensity change); "none" builds the models as before.
    colour_constancy: Literal["none", "grey_world", "optical_density"] = "none"

    def validate(self) -> list[str]:
        errors = []
        if not self.backbones:
            errors.append("backbones: name at least one backbone")
        if self.batch_size < 1:
            errors.append("batch_size: must be at least 1")
        if not self.weights.strip():
            errors.append("weights: say none, imagenet, a weights file or a weights mirror folder")
        return errors


@dataclass(frozen=True)
class CompareConfig:
    epochs: int = 2
    top_k: int = 2
    criterion: Criterion = "mean_accuracy"
    learning_rate: float = 1e-3
    train_images: int = 0  # per epoch; 0 = the whole training split, N = a fixed random N

    def validate(self) -> list[str]:
        errors = []
        if self.epochs < 1:
            errors.append("epochs: must be at least 1")
        if self.train_images < 0:
            errors.append("train_images: must be 0 (all) or a positive image count")
        if self.top_k < 1:
            errors.append("top_k: must be at least 1")
        return errors


@dataclass(frozen=True)
class SearchSpace:
    """What keras-tuner may choose from: lists are choices, pairs are [low, high] ranges."""

    dense_first: list[int] = field(default_factory=lambda: [128, 256, 512, 1024])
    dense_second: list[int] = field(default_factory=lambda: [0, 64, 128])  # 0: one layer
    dropout: list[float] = field(default_factory=lambda: [0.0, 0.5])
    optimizers: list[Optimizer] = field(default_factory=lambda: ["adam", "adamw", "sgd", "lion"])
    learning_rate: list[float] = field(default_factory=lambda: [1e-4, 1e-2])  # log-uniform
    schedules: list[Schedule] = field(default_factory=lambda: ["constant", "cosine"])
    label_smoothing: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2])
    unfreeze: list[int] = field(default_factory=lambda: [0, 10, 20, 40, -1])  # pretrained only

    def validate(self) -> list[str]:
        errors = []
        for name in ("dense_first", "optimizers", "schedules", "label_smoothing", "unfreeze"):
            if not getattr(self, name):
                errors.append(f"{name}: give at least one choice")
        if any(units < 1 for units in self.dense_first):
            errors.append("dense_first: every choice needs at least 1 unit")
        if not self.dense_second or any(units < 0 for units in self.dense_second):
            errors.append("dense_second: give choices of 0 (no second layer) or more units")
        if len(self.dropout) != 2 or not 0.0 <= self.dropout[0] <= self.dropout[1] < 1.0:
            errors.append("dropout: expected [low, high] with 0 <= low <= high < 1")
        rate = self.learning_rate
        if len(rate) != 2 or not 0.0 < rate[0] <= rate[1]:
            errors.append("learning_rate: expected [low, high] with 0 < low <= high")
        if any(not 0.0 <= v < 1.0 for v in self.label_smoothing):
            errors.append("label_smoothing: every choice must be in [0, 1)")
        if any(v < -1 for v in self.unfreeze):
            errors.append("unfreeze: choices are -1 (all), 0 (frozen) or a layer count")
        return errors


@dataclass(frozen=True)
class TuneConfig:
    algorithm: Literal["hyperband", "bayesian", "random"] = "hyperband"
    max_trials: int = 4
    epochs: int = 2
    executions_per_trial: int = 1
    directory: str = ""
    train_images: int = 0  # per trial epoch; 0 = the whole training split, N = a fixed random N
    space: SearchSpace = field(default_factory=SearchSpace)

    def validate(self) -> list[str]:
        errors = []
        if self.max_trials < 1:
            errors.append("max_trials: the tuner budget must be at least 1 trial")
        if self.epochs < 1:
            errors.append("epochs: must be at least 1")
        if self.train_images < 0:
            errors.append("train_images: must be 0 (all) or a positive image count")
        return errors


Consistency = Literal["none", "augmix_jsd"]


@dataclass(frozen=True)
class ConsistencyConfig:
    """AugMix with the Jensen-Shannon consistency loss (Hendrycks et al., ICLR 2020).

    ``augmix_jsd``: each training batch also gets two AugMix views of every image, all three
    go through one forward pass, and the loss is cross-entropy on the clean view plus
    ``weight`` x the Jensen-Shannon divergence of the three predictions. ``severity``,
    ``width`` (chains), ``depth`` (ops per chain; -1: 1-3 at random) and ``alpha`` (Dirichlet
    and Beta mixing) are the paper's, with its defaults.
    """

    kind: Consistency = "none"
    weight: float = 12.0
    severity: int = 3
    width: int = 3
    depth: int = -1
    alpha: float = 1.0

    def validate(self) -> list[str]:
        errors = []
        if self.weight < 0:
            errors.append("weight: must be 0 or more")
        if not 1 <= self.severity <= 10:
            errors.append("severity: must be between 1 and 10 (the paper's level scale)")
        if not 1 <= self.width <= 8:
            errors.append("width: must be between 1 and 8 chains")
        if self.depth == 0 or not -1 <= self.depth <= 5:
            errors.append("depth: -1 (1-3 ops at random) or 1-5 ops per chain")
        if self.alpha <= 0:
            errors.append("alpha: must be positive")
        return errors


@dataclass(frozen=True)
class TrainConfig:
    warmup_epochs: int = 1
    epochs: int = 4
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    early_stopping_patience: int = 3
    optimizer: Optimizer = "adamw"
    schedule: Schedule = "cosine"
    # Decoupled, as Keras applies it to AdamW, SGD and Lion (kernels only, not BatchNorm or
    # biases): each step shrinks them by learning_rate x weight_decay, so 1e-4 suits SGD but
    # is negligible for AdamW (which usually wants 1e-2 to 5e-2) and Lion (more).
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    unfreeze_layers: int = 20
    # Base folder of compare's, tune's and train's checkpoints (each output gets its own
    # folder under it): local, or gs:// (a local copy mirrored there every epoch, so a task
    # restarted on another node resumes). Empty: beside the output; pipeline tasks set it
    # under their output's URI.
    checkpoint_dir: str = ""
    # Final training only (compare and tune fit without it): AugMix + JSD consistency.
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)

    def validate(self) -> list[str]:
        errors = []
        if self.warmup_epochs < 0:
            errors.append("warmup_epochs: must be 0 or more")
        if self.epochs < 1:
            errors.append("epochs: must be at least 1")
        if self.learning_rate <= 0 or self.fine_tune_learning_rate <= 0:
            errors.append("learning_rate: must be positive")
        if self.weight_decay < 0:
            errors.append("weight_decay: must be 0 or more")
        if not 0.0 <= self.label_smoothing < 1.0:
            errors.append("label_smoothing: must be in [0, 1)")
        if self.unfreeze_layers < -1:
            errors.append("unfreeze_layers: -1 (all), 0 (frozen) or a layer count")
        if self.checkpoint_dir.startswith("gs://") and not _gcs_prefix(self.checkpoint_dir):
            errors.append("checkpoint_dir: a gs:// prefix needs a bucket, as gs://BUCKET/PATH")
        return errors


def _gcs_prefix(uri: str) -> bool:
    """Whether a gs:// URI names a bucket (and optionally a path under it)."""
    bucket, _, _ = uri[len("gs://") :].partition("/")
    return bool(bucket)


@dataclass(frozen=True)
class EnsembleConfig:
    fit_weights: bool = True
    calibrate: bool = True
    # Test-time views: each member also sees the image transposed (2), flipped (4) or in all
    # 8 symmetries of the square (8), and their probabilities are averaged. A smear has no
    # up or left, so every view is the same cell; each view costs one more inference pass.
    views: Literal[1, 2, 4, 8] = 1


@dataclass(frozen=True)
class EvaluateConfig:
    corruptions: list[str] = field(default_factory=lambda: ["all"])
    severities: list[int] = field(default_factory=lambda: list(SEVERITIES))
    max_images: int = 0
    bn_adaptation: bool = False
    batch_size: int = 128
    # The independent benchmark (hemaflow.imaging.independent, albumentations): "all", names
    # from it, or [] for off. Names are checked against its table when evaluate starts, so
    # that this module, which training imports, never imports albumentations.
    independent: list[str] = field(default_factory=lambda: ["all"])

    def validate(self) -> list[str]:
        errors = []
        if not self.severities or any(s not in SEVERITIES for s in self.severities):
            errors.append("severities: must be a non-empty list drawn from 1-5")
        if not isinstance(self.independent, list) or not all(
            isinstance(n, str) and re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in self.independent
        ):
            errors.append(
                "independent: must be a list of corruption names (or 'all'; [] turns it off)"
            )
        elif len(set(self.independent)) != len(self.independent):
            errors.append("independent: names must not repeat")
        if self.max_images < 0:
            errors.append("max_images: must be 0 (all) or more")
        return errors


@dataclass(frozen=True)
class BudgetConfig:
    """A wall-clock budget for the whole run, which a plan after compare and tune turns into
    members, epochs and test-time views (:mod:`hemaflow.planning`); 0 minutes = no budget."""

    minutes: float = 0.0
    # The run's end as epoch seconds (UTC), which ``hemaflow run --time-limit`` sets when it
    # starts, so the plan knows the time already spent; 0: budget.minutes from the plan's start.
    deadline: float = 0.0
    # Members train side by side on separate nodes (cluster) instead of one after another on
    # shared cores (a local run): the plan then budgets the longest member, not their sum.
    parallel_members: bool = False
    max_members: int = 3
    # Once lengthen_at members fit at train.epochs, the plan lengthens every member up to this
    # many epochs with the time left (0: never beyond train.epochs).
    max_epochs: int = 0
    # Members at train.epochs before the time left lengthens them; more members join only at
    # max_epochs (0: max_members, so members come before epochs).
    lengthen_at: int = 0
    # Share of what is left that the plan keeps in reserve against its own misprediction.
    margin: float = 0.15
    # Set by the plan for one member's train task: stop training at this wall-clock time.
    member_deadline: float = 0.0

    def validate(self) -> list[str]:
        errors = []
        if self.minutes < 0:
            errors.append("minutes: must be 0 (no budget) or a positive number of minutes")
        if self.deadline < 0 or self.member_deadline < 0:
            errors.append("deadline: must be 0 (none) or epoch seconds")
        if self.max_members < 1:
            errors.append("max_members: must be at least 1")
        if self.max_epochs < 0:
            errors.append("max_epochs: must be 0 (train.epochs) or a number of epochs")
        if not 0 <= self.lengthen_at <= self.max_members:
            errors.append("lengthen_at: must be 0 (max_members) or 1 to max_members")
        if not 0.0 <= self.margin < 1.0:
            errors.append("margin: must be in [0, 1)")
        return errors


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] = "NoSchedule"


@dataclass(frozen=True)
class TaskResources:
    """Kubernetes/Vertex resources for one kind of task."""

    cpu: str = "1"
    memory: str = "4G"
    cpu_limit: str = ""
    memory_limit: str = ""
    accelerator_type: str = ""
    accelerator_count: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    retries: int = 0
    retry_backoff: str = "60s"
    retry_backoff_factor: float = 2.0
    retry_backoff_max: str = "3600s"

    def validate(self) -> list[str]:
        errors = []
        if self.accelerator_count < 0:
            errors.append("accelerator_count: must be 0 or more")
        if self.accelerator_count and not self.accelerator_type:
            errors.append("accelerator_type: needed when accelerator_count > 0")
        if self.retries < 0:
            errors.append("retries: must be 0 or more")
        for name in ("retry_backoff", "retry_backoff_max"):
            if not re.fullmatch(r"\d+s", getattr(self, name)):
                errors.append(f"{name}: must be a duration in seconds such as '60s'")
        if self.retry_backoff_factor < 1.0:
            errors.append("retry_backoff_factor: must be 1 or more")
        return errors


@dataclass(frozen=True)
class ResourcesConfig:
    data: TaskResources = field(default_factory=TaskResources)
    train: TaskResources = field(default_factory=TaskResources)
    evaluate: TaskResources = field(default_factory=TaskResources)


@dataclass(frozen=True)
class PipelineConfig:
    image: str = "hemaflow:latest"
    caching: bool = True
    pipeline_root: str = ""
    name: str = "hemaflow"
    parallelism: int = 0

    def validate(self) -> list[str]:
        errors = []
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.name):
            errors.append("name: lower-case letters, digits and '-', at most 63 characters")
        if self.parallelism < 0:
            errors.append("parallelism: must be 0 (unbounded) or more")
        if not self.image:
            errors.append("image: name the container image every stage runs in")
        return errors


@dataclass(frozen=True)
class Config:
    profile: str = "quickstart"
    seed: int = 1337
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The whole config as canonical JSON (sorted keys), what :func:`from_json` reads."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, overrides: dict[str, Any]) -> Config:
        """A copy with ``overrides`` (nested dict or dotted keys) applied and validated."""
        merged = _deep_merge(self.to_dict(), _expand_dotted(overrides))
        return from_dict(merged, origin="<overrides>")


# --------------------------------------------------------------------------- smoke


#: The smallest image size every keras.applications backbone accepts.
SMOKE_IMAGE_SIZE = 32
#: What ``smoke`` changes: sizes and budgets only, never a stage, backbone, head or policy.
SMOKE_OVERRIDES: dict[str, Any] = {
    "data.image_size": SMOKE_IMAGE_SIZE,
    "data.max_per_class": 20,
    "augment.copies": 1,
    "augment.shards": 2,
    "model.batch_size": 16,
    "model.weights_fallback": "random",
    "compare.epochs": 1,
    "compare.train_images": 32,
    "tune.max_trials": 1,
    "tune.epochs": 1,
    "tune.train_images": 32,
    "train.warmup_epochs": 1,
    "train.epochs": 1,
    "evaluate.max_images": 32,
    "evaluate.corruptions": ["gaussian_noise", "defocus_blur"],
    "evaluate.independent": ["gauss_noise", "gaussian_blur"],
    "evaluate.severities": [3],
    "evaluate.batch_size": 32,
}


def smoke(config: Config) -> Config:
    """``config`` shrunk to minutes on a CPU with its DAG unchanged: a preflight of a profile.

    The same stages, backbones, head, precision policy, top-k ensemble and phase structure (a
    profile that asks for weights still warms up, then fine-tunes); only image size, data,
    epochs and image budgets shrink. Weights that cannot be loaded (no network, no mirror)
    fall back to random initialisation, which train, evaluate and the run summary state.
    A phase keeps at least one epoch, so a profile without a warm-up gets none.
    """
    overrides = dict(SMOKE_OVERRIDES)
    if not config.train.warmup_epochs:
        overrides["train.warmup_epochs"] = 0
    return config.replace(overrides)


# --------------------------------------------------------------------------- loading


def profile_dirs() -> list[Path]:
    """Where profiles are looked up, first match wins: ``HEMAFLOW_PROFILES``, then built-in."""
    site = [Path(p).expanduser() for p in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if p]
    return [*site, PROFILE_DIR]


def available_profiles() -> list[str]:
    return sorted({p.stem for folder in profile_dirs() for p in folder.glob("*.yaml")})


def profile_path(name: str) -> Path | None:
    """The file of profile ``name``: the first folder of :func:`profile_dirs` that has it."""
    for folder in profile_dirs():
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    return None


def load_config(
    profile: str | None = None,
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Load a profile, then a user file on top of it, then ``overrides`` (dotted keys allowed).

    A user file may itself say ``profile: NAME``; ``profile`` given here wins over it.
    """
    user: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        origin = str(path)
        user = _read_yaml(Path(path))
    name = profile or user.get("profile") or "quickstart"
    found = profile_path(name) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(
            f"{origin}: profile: unknown profile {name!r}; choose one of {', '.join(available_profiles())}"
        )
    base = _read_yaml(found)
    merged = _deep_merge(base, user)
    merged["profile"] = name
    if overrides:
        merged = _deep_merge(merged, _expand_dotted(overrides))
        origin = f"{origin} + overrides"
    return from_dict(merged, origin=origin)


def from_dict(raw: dict[str, Any], origin: str = "<dict>") -> Config:
    """Build and validate a :class:`Config`, raising one error that lists every problem.

    ``raw`` is laid over the defaults as a whole tree, so overriding one key of a nested
    section (``augment.policy.blur.p``) keeps its siblings' defaults from the enclosing section.
    """
    errors: list[str] = []
    if isinstance(raw, dict):
        raw = _deep_merge(dataclasses.asdict(Config()), raw)
    config = _build(Config, raw, "", errors)
    if config is not None:
        _validate_tree(config, "", errors)
    if errors:
        raise ConfigError(f"{origin}: invalid configuration: {'; '.join(errors)}")
    return config


def from_json(text: str, origin: str = "config") -> Config:
    """The config :meth:`Config.to_json` wrote, validated again (it may have been edited)."""
    try:
        raw = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{origin}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: must be a JSON object of config sections, got {text[:40]!r}")
    return from_dict(raw, origin=origin)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key.path=value`` from the command line; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def _expand_dotted(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _expand_dotted(value) if isinstance(value, dict) else value
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, raw: Any, where: str, errors: list[str]) -> Any:
    if not isinstance(raw, dict):
        errors.append(
            f"{where.rstrip('.') or '<top>'}: expected a mapping, got {type(raw).__name__}"
        )
        return None
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            errors.append(f"{where}{key}: unknown key (known: {', '.join(sorted(names))})")
    # A key of the wrong type keeps its default, so the values of the other keys are still
    # validated and every problem is reported at once.
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            before = len(errors)
            value = _coerce(hints[f.name], raw[f.name], f"{where}{f.name}", errors)
            if len(errors) == before or dataclasses.is_dataclass(value):
                kwargs[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{where}{f.name}: required key is missing")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        errors.append(f"{where or '<top>'}: {exc}")
        return None


def _coerce(tp: Any, value: Any, where: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where + ".", errors)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            trial: list[str] = []
            result = _coerce(option, value, where, trial)
            if not trial:
                return result
        errors.append(f"{where}: {value!r} is not {_describe(tp)}")
        return None
    if origin is Literal:
        if value not in args:
            errors.append(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {type(value).__name__}")
            return []
        return [_coerce(args[0], v, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {type(value).__name__}")
            return {}
        return {str(k): _coerce(args[1], v, f"{where}.{k}", errors) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            errors.append(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def _describe(tp: Any) -> str:
    parts = []
    for option in typing.get_args(tp):
        if typing.get_origin(option) is Literal:
            parts.extend(repr(a) for a in typing.get_args(option))
        else:
            parts.append(getattr(option, "__name__", str(option)))
    return " or ".join(parts)


def _validate_tree(node: Any, where: str, errors: list[str]) -> None:
    if hasattr(node, "validate"):
        errors.extend(f"{where}{e}" for e in node.validate())
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                _validate_tree(value, f"{where}{f.name}.", errors)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if dataclasses.is_dataclass(item):
                        _validate_tree(item, f"{where}{f.name}[{i}].", errors)
