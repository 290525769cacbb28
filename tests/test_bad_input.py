"""Inputs a careless or hostile user gives every command, and what each must do about them.

One row per (command, input): the command exits 1 with one line ``hemaflow CMD: error: ...``
naming the culprit, no traceback, and leaves its output as it was (absent, or a file or folder
that was already there byte for byte unchanged). Every error is found before any heavy work,
so the whole table runs in seconds; the commands run in process.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hemaflow.pipeline.cli import main

from hemaflow import storage
from hemaflow.config import CLASS_NAMES
from tests.helpers import SIZE, tiny_cnn, write_dataset, write_tfrecord_folder

QUICK = ["--set", "evaluate.corruptions=[jpeg]", "--set", "evaluate.severities=[2]"]
PROGRESS = re.compile(r"^[\w ./-]+: \d+/\d+ ")
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class World:
    """Shared, valid inputs (never written to) and the test's own scratch folder."""

    images: Path  # class folders of real images: basophil, lymphocyte
    dataset: Path  # an ingest Dataset folder
    tfr: Path  # a balance-and-augment TFRecord folder
    model: Path  # an exported Model folder (model.keras + manifest.json)
    tmp: Path = Path()

    def file(self, name: str, data: bytes | str = "keep me\n") -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def folder(self, name: str, files: dict[str, str] | None = None) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        for rel, text in (files or {}).items():
            self.file(f"{name}/{rel}", text)
        return path

    def copy(self, source: Path, name: str) -> Path:
        return Path(shutil.copytree(source, self.tmp / name, symlinks=True))

    def npz(self, name: str, cut: int = 0, flip: bool = False, labels=None) -> Path:
        """A challenge-layout .npz of 16 images: truncated by ``cut`` bytes or bit-flipped."""
        path = self.tmp / name
        images = np.random.default_rng(0).integers(0, 255, (16, SIZE, SIZE, 3), np.uint8)
        np.savez(path, images=images, labels=np.arange(16) % 8 if labels is None else labels)
        data = bytearray(path.read_bytes())
        if flip:
            data[2000:2100] = bytes(b ^ 0xFF for b in data[2000:2100])
        path.write_bytes(bytes(data[: len(data) - cut]))
        return path


Build = Callable[[World], tuple[list[str], Path | None]]


@dataclass
class Row:
    id: str
    build: Build  # -> (argv, the output path or None)
    expect: tuple[str, ...]  # fragments of the one error line
    root_skip: str = ""  # why the row cannot run as root


def row(id: str, build: Build, *expect: str, root_skip: str = "") -> Row:
    return Row(id, build, expect, root_skip)


def out(w: World, name: str = "out") -> Path:
    return w.tmp / name


def single_class(w: World) -> Path:
    src = w.folder("one")
    shutil.copytree(w.images / "basophil", src / "basophil")
    return src


def source_in_artifact(w: World) -> Path:
    """Raw images kept inside an earlier artifact folder, which publishing would replace."""
    w.copy(w.dataset, "art")
    return w.copy(w.images, "art/raw")


def truncated_image(w: World) -> Path:
    src = w.copy(w.images, "src")
    victim = sorted((src / "lymphocyte").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:300])
    return src


def dangling_link(w: World) -> Path:
    src = w.copy(w.images, "src")
    (src / "lymphocyte" / "gone.jpg").symlink_to(w.tmp / "nowhere.jpg")
    return src


def unreadable_image(w: World) -> Path:
    src = w.copy(w.images, "src")
    sorted((src / "basophil").iterdir())[0].chmod(0)
    return src


def truncated_split(w: World) -> Path:
    data = w.copy(w.dataset, "dataset")
    split = data / "train.npz"
    split.write_bytes(split.read_bytes()[:-100])
    return data


def truncated_keras(w: World) -> Path:
    model = w.copy(w.model, "model")
    archive = model / "model.keras"
    archive.write_bytes(archive.read_bytes()[:2000])
    return model / "model.keras"


def zip_not_keras(w: World) -> Path:
    path = w.tmp / "other.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a model")
    return path


def spaces_and_unicode(w: World) -> Path:
    return w.copy(w.images, "données de test ü")


ROOT_READS = "root reads files whatever their mode"

# fmt: off
ROWS = [
    # ------------------------------------------------------------------ ingest: the output
    row("ingest-out-is-a-file", lambda w: (["ingest", str(w.images), "--out", str(w.file("f.txt"))], w.tmp / "f.txt"),
        "f.txt", "exists and is a file"),
    row("ingest-out-is-a-foreign-folder", lambda w: (["ingest", str(w.images), "--out", str(w.folder("mine", {"thesis.tex": "x"}))], w.tmp / "mine"),
        "mine", "not a hemaflow artifact"),
    row("ingest-out-under-a-file", lambda w: (["ingest", str(w.images), "--out", str(w.file("f.txt") / "ds")], w.tmp / "f.txt"),
        "f.txt", "is a file, not a folder"),
    row("ingest-out-is-the-source", lambda w: (["ingest", str(s := w.copy(w.images, "src")), "--out", str(s)], w.tmp / "src"),
        "src", "is also an input"),
    row("ingest-out-inside-the-source", lambda w: (["ingest", str(s := w.copy(w.images, "src")), "--out", str(s / "ds")], w.tmp / "src"),
        "ds", "is inside the input"),
    row("ingest-out-holds-the-source", lambda w: (["ingest", str(source_in_artifact(w)), "--out", str(w.tmp / "art")], w.tmp / "art"),
        "art", "holds the input"),
    # ------------------------------------------------------------------ ingest: the source
    row("ingest-source-missing", lambda w: (["ingest", str(w.tmp / "nope"), "--out", str(out(w))], out(w)),
        "nope", "no such file or folder"),
    row("ingest-source-empty-folder", lambda w: (["ingest", str(w.folder("empty")), "--out", str(out(w))], out(w)),
        "empty", "no class sub-folders"),
    row("ingest-source-one-class", lambda w: (["ingest", str(single_class(w)), "--out", str(out(w))], out(w)),
        "one", "only 1 class found ('basophil')", "at least 2"),
    row("ingest-npz-one-class", lambda w: (["ingest", str(w.npz("one.npz", labels=np.zeros(16, int))), "--out", str(out(w))], out(w)),
        "one.npz", "only 1 class found ('basophil')"),
    row("ingest-npz-truncated", lambda w: (["ingest", str(w.npz("cut.npz", cut=100)), "--out", str(out(w))], out(w)),
        "cut.npz", "not a readable .npz"),
    row("ingest-npz-corrupt", lambda w: (["ingest", str(w.npz("bad.npz", flip=True)), "--out", str(out(w))], out(w)),
        "bad.npz", "key 'images': unreadable"),
    row("ingest-npz-empty-file", lambda w: (["ingest", str(w.file("zero.npz", b"")), "--out", str(out(w))], out(w)),
        "zero.npz", "not a readable .npz"),
    row("ingest-source-text-file", lambda w: (["ingest", str(w.file("notes.txt")), "--out", str(out(w))], out(w)),
        "notes.txt", "not a source hemaflow reads"),
    row("ingest-image-truncated", lambda w: (["ingest", str(truncated_image(w)), "--out", str(out(w))], out(w)),
        "lymphocyte", "unreadable image"),
    row("ingest-image-dangling-symlink", lambda w: (["ingest", str(dangling_link(w)), "--out", str(out(w))], out(w)),
        "gone.jpg", "unreadable image"),
    row("ingest-image-unreadable", lambda w: (["ingest", str(unreadable_image(w)), "--out", str(out(w))], out(w)),
        "basophil", "unreadable image", root_skip=ROOT_READS),
    row("ingest-bloodmnist-size", lambda w: (["ingest", "bloodmnist:99", "--out", str(out(w))], out(w)),
        "bloodmnist:99", "sizes 28, 64, 128, 224"),
    # ------------------------------------------------------------------ ingest: the config
    row("ingest-size-huge", lambda w: (["ingest", str(w.images), "--out", str(out(w)), "--size", "100000"], out(w)),
        "data.image_size", "between 16 and 1024"),
    row("ingest-size-zero", lambda w: (["ingest", str(w.images), "--out", str(out(w)), "--size", "0"], out(w)),
        "data.image_size", "between 16 and 1024"),
    row("ingest-set-out-of-range", lambda w: (["ingest", str(w.images), "--out", str(out(w)), "--set", "data.split.val=2"], out(w)),
        "data.split.val", "between 0 and 1"),
    row("ingest-set-type-and-value", lambda w: (["ingest", str(w.images), "--out", str(out(w)), "--set", "data.image_size=big", "--set", "train.epochs=0"], out(w)),
        "data.image_size: expected int, got 'big'", "train.epochs: must be at least 1"),
    row("ingest-set-unknown-key", lambda w: (["ingest", str(w.images), "--out", str(out(w)), "--set", "data.imagesize=64"], out(w)),
        "data.imagesize", "unknown key"),
    row("ingest-set-no-equals", lambda w: (["ingest", str(w.images), "--out", str(out(w)), "--set", "train.epochs"], out(w)),
        "train.epochs", "expected KEY=VALUE"),
    row("ingest-config-missing", lambda w: (["ingest", str(w.images), "--out", str(out(w)), "--config", str(w.tmp / "my.yaml")], out(w)),
        "my.yaml", "configuration file not found"),
    row("ingest-config-binary", lambda w: (["ingest", str(w.images), "--out", str(out(w)), "--config", str(w.file("my.yaml", b"\xff\xfe\x00garbage"))], out(w)),
        "my.yaml", "not valid YAML"),
    row("ingest-config-a-list", lambda w: (["ingest", str(w.images), "--out", str(out(w)), "--config", str(w.file("my.yaml", "- 1\n- 2\n"))], out(w)),
        "my.yaml", "must be a mapping"),
    row("ingest-config-type-and-value", lambda w: (["ingest", str(w.images), "--out", str(out(w)), "--config", str(w.file("my.yaml", "data:\n  image_size: big\ntrain:\n  epochs: 0\n"))], out(w)),
        "my.yaml", "data.image_size: expected int", "train.epochs: must be at least 1"),
    # ------------------------------------------------------------------ augment
    row("augment-out-is-a-file", lambda w: (["augment", str(w.dataset), "--out", str(w.file("f.txt"))], w.tmp / "f.txt"),
        "f.txt", "exists and is a file"),
    row("augment-out-is-the-dataset", lambda w: (["augment", str(d := w.copy(w.dataset, "ds")), "--out", str(d)], w.tmp / "ds"),
        "ds", "is also an input"),
    row("augment-out-inside-the-dataset", lambda w: (["augment", str(d := w.copy(w.dataset, "ds")), "--out", str(d / "tfr")], w.tmp / "ds"),
        "tfr", "is inside the input"),
    row("augment-dataset-missing", lambda w: (["augment", str(w.tmp / "nope"), "--out", str(out(w))], out(w)),
        "nope", "no such Dataset folder"),
    row("augment-dataset-is-raw-images", lambda w: (["augment", str(w.images), "--out", str(out(w))], out(w)),
        "images", "no manifest.json"),
    row("augment-dataset-is-tfrecords", lambda w: (["augment", str(w.tfr), "--out", str(out(w))], out(w)),
        "tfr", "train.npz is missing"),
    row("augment-split-truncated", lambda w: (["augment", str(truncated_split(w)), "--out", str(out(w))], out(w)),
        "train.npz", "sha256"),
    row("augment-set-shards-zero", lambda w: (["augment", str(w.dataset), "--out", str(out(w)), "--set", "augment.shards=0"], out(w)),
        "augment.shards", "at least 1"),
    # ------------------------------------------------------------------ compare, tune, train
    row("compare-out-is-a-file", lambda w: (["compare", str(w.tfr), "--backbone", "small_cnn", "--out", str(w.file("f.txt"))], w.tmp / "f.txt"),
        "f.txt", "exists and is a file"),
    row("compare-out-is-the-data", lambda w: (["compare", str(d := w.copy(w.tfr, "tfr")), "--backbone", "small_cnn", "--out", str(d)], w.tmp / "tfr"),
        "tfr", "is also an input"),
    row("compare-backbone-unknown", lambda w: (["compare", str(w.tfr), "--backbone", "resnet9000", "--out", str(out(w))], out(w)),
        "resnet9000"),
    row("compare-data-missing", lambda w: (["compare", str(w.tmp / "nope"), "--backbone", "small_cnn", "--out", str(out(w))], out(w)),
        "nope"),
    row("compare-data-is-a-dataset", lambda w: (["compare", str(w.dataset), "--backbone", "small_cnn", "--out", str(out(w))], out(w)),
        "dataset"),
    row("tune-out-is-a-file", lambda w: (["tune", str(w.tfr), "--backbone", "small_cnn", "--out", str(w.file("f.txt"))], w.tmp / "f.txt"),
        "f.txt", "exists and is a file"),
    row("tune-out-is-a-foreign-folder", lambda w: (["tune", str(w.tfr), "--backbone", "small_cnn", "--out", str(w.folder("mine", {"a.txt": "x"}))], w.tmp / "mine"),
        "mine", "not a hemaflow artifact"),
    row("tune-max-trials-zero", lambda w: (["tune", str(w.tfr), "--backbone", "small_cnn", "--out", str(out(w)), "--set", "tune.max_trials=0"], out(w)),
        "tune.max_trials"),
    row("train-out-is-a-file", lambda w: (["train", str(w.tfr), "--backbone", "small_cnn", "--out", str(w.file("f.txt"))], w.tmp / "f.txt"),
        "f.txt", "exists and is a file"),
    row("train-out-is-the-hparams", lambda w: (["train", str(w.tfr), "--backbone", "small_cnn", "--hparams", str(h := w.file("hp.json", "{}")), "--out", str(h)], w.tmp / "hp.json"),
        "hp.json", "is also an input"),
    row("train-hparams-missing", lambda w: (["train", str(w.tfr), "--backbone", "small_cnn", "--hparams", str(w.tmp / "hp.json"), "--out", str(out(w))], out(w)),
        "hp.json"),
    row("train-hparams-not-json", lambda w: (["train", str(w.tfr), "--backbone", "small_cnn", "--hparams", str(w.file("hp.json", "{oops")), "--out", str(out(w))], out(w)),
        "hp.json", "not valid JSON"),
    row("train-epochs-negative", lambda w: (["train", str(w.tfr), "--backbone", "small_cnn", "--out", str(out(w)), "--set", "train.epochs=-1"], out(w)),
        "train.epochs", "at least 1"),
    # ------------------------------------------------------------------ ensemble
    row("ensemble-out-is-a-file", lambda w: (["ensemble", str(w.tfr), "--member", str(w.model), "--out", str(w.file("f.txt"))], w.tmp / "f.txt"),
        "f.txt", "exists and is a file"),
    row("ensemble-out-is-a-member", lambda w: (["ensemble", str(w.tfr), "--member", str(m := w.copy(w.model, "m")), "--out", str(m)], w.tmp / "m"),
        "is also an input"),
    row("ensemble-member-missing", lambda w: (["ensemble", str(w.dataset), "--member", str(w.tmp / "nope"), "--out", str(out(w))], out(w)),
        "nope"),
    row("ensemble-member-not-a-model", lambda w: (["ensemble", str(w.dataset), "--member", str(w.folder("notes", {"a.txt": "x"})), "--out", str(out(w))], out(w)),
        "notes"),
    row("ensemble-data-missing", lambda w: (["ensemble", str(w.tmp / "nope"), "--member", str(w.model), "--out", str(out(w))], out(w)),
        "nope"),
    # ------------------------------------------------------------------ evaluate
    row("evaluate-out-is-a-file", lambda w: (["evaluate", str(w.model), str(w.images), "--out", str(w.file("f.txt"))], w.tmp / "f.txt"),
        "f.txt", "exists and is a file"),
    row("evaluate-out-is-the-model", lambda w: (["evaluate", str(m := w.copy(w.model, "m")), str(w.images), "--out", str(m)], w.tmp / "m"),
        "is also an input"),
    row("evaluate-out-inside-the-source", lambda w: (["evaluate", str(w.model), str(s := w.copy(w.images, "src")), "--out", str(s / "eval")], w.tmp / "src"),
        "eval", "is inside the input"),
    row("evaluate-model-missing", lambda w: (["evaluate", str(w.tmp / "nope.keras"), str(w.images), "--out", str(out(w))], out(w)),
        "nope.keras"),
    row("evaluate-model-is-text", lambda w: (["evaluate", str(w.file("m.keras")), str(w.images), "--out", str(out(w))], out(w)),
        "m.keras", "not a Keras 3 .keras archive"),
    row("evaluate-model-truncated", lambda w: (["evaluate", str(truncated_keras(w)), str(w.images), "--out", str(out(w))], out(w)),
        "model.keras"),
    row("evaluate-model-other-zip", lambda w: (["evaluate", str(zip_not_keras(w)), str(w.images), "--out", str(out(w))], out(w)),
        "other.keras"),
    row("evaluate-source-missing", lambda w: (["evaluate", str(w.model), str(w.tmp / "nope"), "--out", str(out(w))], out(w)),
        "nope"),
    row("evaluate-source-npz-truncated", lambda w: (["evaluate", str(w.model), str(w.npz("cut.npz", cut=100)), "--out", str(out(w))], out(w)),
        "cut.npz", "not a readable .npz"),
    row("evaluate-max-images-negative", lambda w: (["evaluate", str(w.model), str(w.images), "--out", str(out(w)), "--max-images", "-1"], out(w)),
        "evaluate.max_images"),
    # ------------------------------------------------------------------ predict
    row("predict-out-is-a-folder", lambda w: (["predict", str(w.model), str(w.images), "--out", str(w.folder("csvs", {"a.csv": "x"}))], w.tmp / "csvs"),
        "csvs", "is a folder"),
    row("predict-out-is-the-image", lambda w: (["predict", str(w.model), str(f := sorted(w.copy(w.images, "src").glob("*/*"))[0]), "--out", str(f)], f),
        "is also an input"),
    row("predict-out-is-the-model", lambda w: (["predict", str(m := w.copy(w.model, "m") / "model.keras"), str(w.images), "--out", str(m)], m),
        "model.keras", "is also an input"),
    row("predict-out-under-a-file", lambda w: (["predict", str(w.model), str(w.images), "--out", str(w.file("f.txt") / "p.csv")], w.tmp / "f.txt"),
        "f.txt", "is a file, not a folder"),
    row("predict-out-on-gcs", lambda w: (["predict", str(w.model), str(w.images), "--out", "gs://bucket/p.csv"], None),
        "gs://bucket/p.csv", "not supported"),
    row("predict-source-empty-folder", lambda w: (["predict", str(w.model), str(w.folder("empty")), "--out", str(out(w, "p.csv"))], out(w, "p.csv")),
        "empty", "no image files"),
    row("predict-source-npz-truncated", lambda w: (["predict", str(w.model), str(w.npz("cut.npz", cut=100)), "--out", str(out(w, "p.csv"))], out(w, "p.csv")),
        "cut.npz", "not a readable .npz"),
    row("predict-source-image-truncated", lambda w: (["predict", str(w.model), str(truncated_image(w)), "--out", str(out(w, "p.csv"))], out(w, "p.csv")),
        "lymphocyte", "unreadable image"),
    row("predict-model-missing", lambda w: (["predict", str(w.tmp / "nope"), str(w.images), "--out", str(out(w, "p.csv"))], out(w, "p.csv")),
        "nope"),
    # ------------------------------------------------------------------ compile, run
    row("compile-out-is-a-folder", lambda w: (["compile", "--out", str(w.folder("yamls", {"a.yaml": "x"}))], w.tmp / "yamls"),
        "yamls", "is a folder"),
    row("compile-out-is-the-config", lambda w: (["compile", "--config", str(c := w.file("my.yaml", "seed: 3\n")), "--out", str(c)], w.tmp / "my.yaml"),
        "my.yaml", "is also an input"),
    row("compile-set-out-of-range", lambda w: (["compile", "--set", "compare.top_k=0", "--out", str(out(w, "p.yaml"))], out(w, "p.yaml")),
        "compare.top_k"),
    row("run-out-is-a-file", lambda w: (["run", "--out", str(w.file("f.txt"))], w.tmp / "f.txt"),
        "f.txt", "exists and is a file"),
    # ------------------------------------------------------------------ submit, schedule
    row("submit-no-host", lambda w: (["submit"], None), "--host is required"),
    row("submit-vertex-no-project", lambda w: (["submit", "--backend", "vertex"], None), "--project and --region"),
    row("submit-package-missing", lambda w: (["submit", "--host", "http://127.0.0.1:9", "--package", str(w.tmp / "p.yaml")], None),
        "p.yaml"),
    row("submit-package-not-a-pipeline", lambda w: (["submit", "--host", "http://127.0.0.1:9", "--package", str(w.file("p.yaml", "a: 1\n"))], None),
        "p.yaml", "not a compiled KFP pipeline"),
    row("submit-package-binary", lambda w: (["submit", "--host", "http://127.0.0.1:9", "--package", str(w.file("p.yaml", b"\xff\xfe\x00\x01"))], None),
        "p.yaml"),
    row("schedule-max-concurrency-zero", lambda w: (["schedule", "create", "--cron", "0 3 * * 1", "--max-concurrency", "0", "--host", "http://127.0.0.1:9"], None),
        "--max-concurrency"),
    row("schedule-cron-garbage", lambda w: (["schedule", "create", "--cron", "every monday", "--host", "http://127.0.0.1:9"], None),
        "every monday"),
    row("schedule-list-no-host", lambda w: (["schedule", "list"], None), "--host is required"),
    # ------------------------------------------------------------------ image, component
    row("image-build-arg-no-equals", lambda w: (["image", "build", "--build-arg", "PIP_INDEX"], None),
        "PIP_INDEX", "KEY=VALUE"),
    row("image-ca-cert-missing", lambda w: (["image", "build", "--ca-cert", str(w.tmp / "ca.pem")], None),
        "ca.pem"),
    row("component-image-no-name", lambda w: (["component", "run", "ingest", "--image"], None),
        "--image"),
    row("component-unknown-stage", lambda w: (["component", "run", "ingset", "--out", str(out(w))], out(w)),
        "ingset", "not a stage"),
]
# fmt: on


@pytest.fixture(scope="module")
def world(pbc128_root, tmp_path_factory) -> World:
    from hemaflow.modeling.export import export_model

    root = tmp_path_factory.mktemp("bad-input")
    images = root / "images"
    for name in ("basophil", "lymphocyte"):
        (images / name).mkdir(parents=True)
        for f in sorted((pbc128_root / name).iterdir())[:3]:
            shutil.copy2(f, images / name / f.name)
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 255, (16, SIZE, SIZE, 3), np.uint8)
    labels = np.arange(16) % len(CLASS_NAMES)
    splits = {
        s: (arrays, labels, [f"{s}/{i}" for i in range(16)]) for s in ("train", "val", "test")
    }
    model = root / "model"
    with storage.artifact_dir(model) as staging:
        export_model(tiny_cnn(), staging, list(CLASS_NAMES), SIZE, {"backbone": "tiny"})
    world = World(
        images=images,
        dataset=write_dataset(root / "dataset", splits),
        tfr=write_tfrecord_folder(root / "tfr", splits),
        model=model,
    )
    for artifact in (world.dataset, world.tfr):
        (artifact / storage.COMPLETE_MARKER).write_text("")
    return world


def snapshot(path: Path | None) -> dict[str, bytes] | None:
    """Every file under ``path`` (or the file itself) with its bytes; None if absent."""
    if path is None or not (path.exists() or path.is_symlink()):
        return None
    if not path.is_dir():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_line_naming_the_culprit(case: Row, world: World, tmp_path, capsys):
    if case.root_skip and AS_ROOT:
        pytest.skip(case.root_skip)
    world.tmp = tmp_path
    argv, output = case.build(world)
    before = snapshot(output)
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    # An error found while decoding may come with that decoding's progress line, nothing else.
    said = [line for line in err.strip().splitlines() if not PROGRESS.match(line)]
    assert "Traceback" not in err
    assert len(said) == 1, err
    line = said[0]
    assert line.startswith(f"hemaflow {argv[0]}: error: "), err
    for fragment in case.expect:
        assert fragment in line
    assert snapshot(output) == before, f"{output} changed"
    leftovers = [p.name for p in tmp_path.iterdir() if ".staging-" in p.name or ".old-" in p.name]
    assert not leftovers


def test_evaluate_a_bare_keras_file_on_a_raw_folder(world: World, tmp_path):
    """The command's own help example: MODEL.keras (manifest beside it) and class folders."""
    target = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            str(world.model / "model.keras"),
            str(world.images),
            "--out",
            str(target),
            *QUICK,
        ]
    )
    assert code == 0
    assert (target / "metrics.json").is_file() and (target / "model_card.md").is_file()


def test_spaces_and_unicode_in_paths_work(world: World, tmp_path):
    world.tmp = tmp_path
    source = spaces_and_unicode(world)
    target = tmp_path / "sortie ü" / "jeu de données"
    assert main(["ingest", str(source), "--out", str(target), "--size", "32"]) == 0
    assert (target / "manifest.json").is_file()
    csv = tmp_path / "prédictions ü.csv"
    assert main(["predict", str(world.model), str(source), "--out", str(csv)]) == 0
    assert len(csv.read_text().splitlines()) == 7


def test_a_symlinked_source_and_symlinked_images_work(world: World, tmp_path):
    """A link to a data folder elsewhere, and class folders of links (a common subset recipe)."""
    link = tmp_path / "link"
    link.symlink_to(world.images)
    subset = tmp_path / "subset"
    for image in sorted(world.images.glob("*/*")):
        (subset / image.parent.name).mkdir(parents=True, exist_ok=True)
        (subset / image.parent.name / image.name).symlink_to(image)
    for source, name in ((link, "a"), (subset, "b")):
        assert main(["ingest", str(source), "--out", str(tmp_path / name), "--size", "32"]) == 0


def test_outputs_a_run_may_write_pass_the_check(world: World, tmp_path):
    """What KFP hands a task (a fresh path, an empty folder), an earlier artifact, a file to
    replace, and a run folder to write into."""
    empty = tmp_path / "empty"
    empty.mkdir()
    storage.check_output(tmp_path / "fresh" / "deeper", inputs=[world.dataset])
    storage.check_output(empty, inputs=[world.dataset])
    storage.check_output(world.tfr, inputs=[world.dataset])
    storage.check_output(world.file("p.csv"), "file", inputs=[world.model])
    storage.check_output(world.folder("run", {"metrics.json": "{}"}), "root")
    with pytest.raises(storage.OutputError, match="empty"):
        storage.check_output("")
