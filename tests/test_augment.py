"""balance-and-augment end to end on a small Dataset of real pbc128 cells (Beam DirectRunner)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemaflow.config import AugFamily, AugmentPolicy, load_config
from hemaflow.data import dataset, tfrecords
from tests.helpers import mark_complete

SIZE = 32
TRAIN_PER_CLASS = (7, 6, 5, 4, 3, 2, 2, 1)  # imbalanced on purpose
EVAL_PER_CLASS = 2


def make_dataset(
    root: Path, pbc128_root: Path, train=TRAIN_PER_CLASS, evals=EVAL_PER_CLASS
) -> Path:
    """A Dataset folder (train/val/test .npz + manifest) from decoded pbc128 images."""
    root.mkdir(parents=True, exist_ok=True)
    folders = sorted(p for p in pbc128_root.iterdir() if p.is_dir())
    names = [f.name for f in folders]
    wanted = {"train": train, "val": [evals] * len(folders), "test": [evals] * len(folders)}
    files, counts, offset = {}, {}, 0
    for split, per_class in wanted.items():
        images, labels, ids = [], [], []
        for label, folder in enumerate(folders):
            paths = sorted(folder.iterdir())[offset : offset + per_class[label]]
            for path in paths:
                with Image.open(path) as im:
                    images.append(np.asarray(im.convert("RGB").resize((SIZE, SIZE))))
                labels.append(label)
                ids.append(f"{folder.name}/{path.name}")
        offset += max(per_class)
        stacked = np.stack(images) if images else np.zeros((0, SIZE, SIZE, 3), np.uint8)
        data = dataset.Split(stacked, np.asarray(labels, np.int64), np.asarray(ids, dtype=str))
        files[f"{split}.npz"] = dataset.save_split(root, split, data)
        counts[split] = {n: int((data.labels == c).sum()) for c, n in enumerate(names)}
    dataset.write_manifest(
        root,
        {
            "kind": "dataset",
            "class_names": names,
            "image_size": SIZE,
            "counts": counts,
            "files": files,
            "seed": 1,
            "synthetic": False,
            "source": str(pbc128_root),
        },
    )
    return mark_complete(root)


def small_config(**overrides):
    """A config whose policy exercises Keras layers and imageops but traces few graphs."""
    base = {
        "augment.batch_size": 24,
        "augment.shards": 3,
        "augment.copies": 1,
        "augment.mix.kind": "cutmix",
        "seed": 7,
    }
    config = load_config("quickstart", overrides={**base, **overrides})
    off = {f.name: AugFamily(0.0, 0.5) for f in dataclasses.fields(AugmentPolicy)}
    policy = AugmentPolicy(
        **{**off, "geometric": AugFamily(1.0, 0.5), "chromatic": AugFamily(0.5, 0.4)}
    )
    bmk = AugmentPolicy(**{**off, "stain": AugFamily(1.0, 0.6), "noise": AugFamily(0.5, 0.5)})
    return config.replace(
        {
            "augment": {
                "policy": dataclasses.asdict(policy),
                "bmk_policy": dataclasses.asdict(bmk),
            }
        }
    )


@pytest.fixture(scope="module")
def ds(pbc128_root, tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds") / "dataset", pbc128_root)


@pytest.fixture(scope="module")
def out(ds, tmp_path_factory) -> tuple[Path, dict]:
    from hemaflow.components import augment

    folder = tmp_path_factory.mktemp("tfr") / "records"
    summary = augment.run(str(ds), str(folder), small_config())
    return folder, summary


def read_split(folder: Path, split: str, num_classes: int = 8):
    """All records of one split: (images, soft labels, source ids) in file order."""
    images, soft, ids = [], [], []
    batches = tfrecords.read_dataset(folder, split, num_classes, SIZE, 64, with_ids=True)
    for x, y, i in batches:
        images.append(x.numpy())
        soft.append(y.numpy())
        ids.extend(s.decode() for s in i.numpy())
    return np.concatenate(images), np.concatenate(soft), ids


# --------------------------------------------------------------------------- planning


def test_balance_plan_counts_are_exact():
    from hemaflow.components.augment import balance_plan

    labels = np.repeat(np.arange(4), [9, 4, 2, 1])
    rows, copy, mixed = balance_plan(labels, 4, "max", copies=2, seed=3)
    total = np.bincount(labels, minlength=4) + np.bincount(labels[rows], minlength=4)
    assert total.tolist() == [27, 27, 27, 27]  # 9 x (1 + 2) per class
    assert np.bincount(labels[mixed], minlength=4).tolist() == [9, 9, 9, 9]
    # A minority image is reused evenly: the single class-3 image gets 26 numbered copies.
    assert sorted(copy[labels[rows] == 3].tolist()) == list(range(1, 27))
    # balance_to below a class's count never drops its originals.
    rows, _, _ = balance_plan(labels, 4, 3, copies=0, seed=3)
    kept = np.bincount(labels, minlength=4) + np.bincount(labels[rows], minlength=4)
    assert kept.tolist() == [9, 4, 3, 3]


def test_balance_plan_refuses_an_empty_class():
    from hemaflow.components.augment import balance_plan

    from hemaflow.errors import StageError

    with pytest.raises(StageError, match="class index 2 has no training images"):
        balance_plan(np.array([0, 1, 1, 3]), 4, "max", copies=1, seed=0)


def test_runner_options_pass_through():
    from apache_beam.options.pipeline_options import (
        DirectOptions,
        GoogleCloudOptions,
        StandardOptions,
    )
    from hemaflow.components.augment import pipeline_options

    aug = small_config(
        **{
            "augment.runner": "DataflowRunner",
            "augment.runner_options": ["--project=blood-lab", "--region=europe-west4"],
        }
    ).augment
    options = pipeline_options(aug)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).project == "blood-lab"
    assert options.view_as(GoogleCloudOptions).region == "europe-west4"
    local = pipeline_options(
        small_config(**{"augment.runner_options": ["--direct_num_workers=2"]}).augment
    )
    # DirectRunner runs as Beam's in-process FnApiRunner (no Prism download).
    assert local.view_as(StandardOptions).runner == "FnApiRunner"
    assert local.view_as(DirectOptions).direct_num_workers == 2


def test_remote_runners_need_a_gcs_output_and_shards_are_gathered(tmp_path):
    from hemaflow.components.augment import gather_shards, write_root

    from hemaflow.errors import StageError

    assert write_root("DirectRunner", str(tmp_path)) is None
    with pytest.raises(StageError, match="DataflowRunner runs on remote workers.*gs://"):
        write_root("DataflowRunner", str(tmp_path / "out"))
    remote = write_root("DataflowRunner", "gs://bucket/runs/tfr")
    assert remote.startswith("gs://bucket/runs/tfr.beam-tmp-")
    # Gathering copies the workers' tree (shards and shard stats) and removes the source.
    source = tmp_path / "written"
    (source / "_shard_stats").mkdir(parents=True)
    (source / "train-00000-of-00001.tfrecord.gz").write_bytes(b"shard")
    (source / "_shard_stats" / "train.json").write_text("{}")
    staging = tmp_path / "staging"
    staging.mkdir()
    gather_shards(str(source), staging)
    assert (staging / "train-00000-of-00001.tfrecord.gz").read_bytes() == b"shard"
    assert (staging / "_shard_stats" / "train.json").read_text() == "{}"
    assert not source.exists()


# --------------------------------------------------------------------------- the stage


@pytest.mark.slow
def test_manifest_and_exact_class_balance(out):
    folder, summary = out
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "tfrecords" and manifest["image_size"] == SIZE
    assert len(manifest["class_names"]) == 8 and manifest["synthetic"] is False
    target = max(TRAIN_PER_CLASS) * 2  # majority x (1 + copies)
    assert manifest["train_composition"] == {
        "original": sum(TRAIN_PER_CLASS),
        "augmented": 8 * target - sum(TRAIN_PER_CLASS),
        "mixed": 8 * max(TRAIN_PER_CLASS),
    }
    assert manifest["totals"] == {
        "train": 8 * target + 8 * max(TRAIN_PER_CLASS),
        "val": 16,
        "test": 16,
        "bmk": 16,
        "bmk_val": 16,
    }
    assert summary["totals"] == manifest["totals"]
    # Every shard named in the manifest exists; train has augment.shards of them.
    assert len(manifest["shards"]["train"]) == 3
    for names in manifest["shards"].values():
        for name in names:
            assert (folder / name).is_file()
    assert (folder / "report.html").stat().st_size > 10_000

    _, soft, ids = read_split(folder, "train")
    hard = np.argmax(soft, axis=1)
    unmixed = np.array(["#cutmix" not in i for i in ids])
    assert np.bincount(hard[unmixed], minlength=8).tolist() == [target] * 8
    assert (~unmixed).sum() == 8 * max(TRAIN_PER_CLASS)
    assert list(manifest["counts"]["train"].values()) == np.bincount(hard, minlength=8).tolist()


@pytest.mark.slow
def test_train_round_trip_and_soft_labels(out, ds):
    folder, _ = out
    images, soft, ids = read_split(folder, "train")
    assert images.shape[1:] == (SIZE, SIZE, 3) and images.dtype == np.uint8
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-5)
    mixed = np.array(["#cutmix+" in i for i in ids])
    assert np.any(soft[mixed].max(axis=1) < 1.0), "CutMix records must carry soft labels"
    assert np.all(soft[~mixed].max(axis=1) == 1.0)
    # Originals are kept pixel-identical; augmented copies differ from their source.
    source = dataset.load_split(ds, "train")
    by_id = {str(i): k for k, i in enumerate(source.ids)}
    for image, record_id in zip(images, ids, strict=True):
        if "#" not in record_id:
            assert np.array_equal(image, source.images[by_id[record_id]])
    augmented = [(img, i) for img, i in zip(images, ids, strict=True) if "#aug" in i]
    differ = [
        not np.array_equal(img, source.images[by_id[i.split("#")[0]]]) for img, i in augmented
    ]
    assert np.mean(differ) > 0.9
    # Shuffled: one shard's first records mix originals, augmented and CutMix images.
    import tensorflow as tf

    first = sorted(folder.glob("train-00000-*"))[0]
    head = [
        tf.io.parse_single_example(r, tfrecords.feature_spec(8))["source_id"].numpy().decode()
        for r in read_records(first)[:30]
    ]
    kinds = {"mix" if "#cutmix" in i else "aug" if "#aug" in i else "orig" for i in head}
    assert kinds == {"mix", "aug", "orig"}


@pytest.mark.slow
@pytest.mark.parametrize("split", ["val", "test"])
def test_val_and_test_are_unaugmented(out, ds, split):
    folder, _ = out
    images, soft, ids = read_split(folder, split)
    source = dataset.load_split(ds, split)
    by_id = {str(i): k for k, i in enumerate(source.ids)}
    assert sorted(ids) == sorted(str(i) for i in source.ids)
    for k, record_id in enumerate(ids):
        row = by_id[record_id]
        assert np.array_equal(images[k], source.images[row])
        assert int(np.argmax(soft[k])) == int(source.labels[row])


@pytest.mark.slow
@pytest.mark.parametrize(("split", "source"), [("bmk", "test"), ("bmk_val", "val")])
def test_bmk_splits_are_their_source_augmented(out, ds, split, source):
    folder, _ = out
    bmk, soft, ids = read_split(folder, split)
    test = dataset.load_split(ds, source)
    by_id = {str(i): k for k, i in enumerate(test.ids)}
    assert all(i.endswith("#bmk") for i in ids) and len(ids) == len(test)
    rows = [by_id[i[: -len("#bmk")]] for i in ids]
    assert [int(np.argmax(s)) for s in soft] == test.labels[rows].tolist()
    differ = [not np.array_equal(b, test.images[r]) for b, r in zip(bmk, rows, strict=True)]
    assert np.mean(differ) > 0.9


@pytest.mark.slow
def test_same_dataset_and_seed_give_the_same_bytes(out, ds, tmp_path):
    from hemaflow.components import augment

    folder, _ = out
    config = small_config(
        **{"augment.runner_options": ["--direct_running_mode=in_memory", "--direct_num_workers=1"]}
    )
    again = tmp_path / "again"
    augment.run(str(ds), str(again), config)
    shards = sorted(p.name for p in folder.glob(f"*{tfrecords.SHARD_SUFFIX}"))
    assert shards == sorted(p.name for p in again.glob(f"*{tfrecords.SHARD_SUFFIX}"))
    for name in shards:
        first, second = read_records(folder / name), read_records(again / name)
        assert first == second, f"{name} differs between two runs with the same seed"


def read_records(path: Path) -> list[bytes]:
    import tensorflow as tf

    return [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]


# --------------------------------------------------------------------------- bad input


def test_missing_dataset_dir(tmp_path):
    from hemaflow.components import augment

    missing = tmp_path / "nowhere"
    with pytest.raises(dataset.DatasetError, match="nowhere: no such Dataset folder"):
        augment.run(str(missing), str(tmp_path / "out"), small_config())
    assert not (tmp_path / "out").exists()


def test_empty_split(ds, tmp_path):
    from hemaflow.components.augment import load_dataset

    broken = make_dataset(tmp_path / "empty", Path(_pbc(ds)), evals=0)
    with pytest.raises(dataset.DatasetError, match="split 'val' is empty"):
        load_dataset(str(broken))


def test_manifest_disagreeing_with_data(ds, tmp_path):
    import shutil

    from hemaflow.components import augment
    from hemaflow.components.augment import load_dataset

    copy = tmp_path / "copy"
    shutil.copytree(ds, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["image_size"] = 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(dataset.DatasetError, match=r"train\.npz: images are uint8 .*image_size 64"):
        augment.run(str(copy), str(tmp_path / "out"), small_config())

    manifest["image_size"] = SIZE
    manifest["counts"]["test"]["platelet"] = 5
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(dataset.DatasetError, match=r"test\.npz: 2 images of class 'platelet'"):
        load_dataset(str(copy))


def test_cli_reports_a_missing_folder_in_one_line(tmp_path, capsys):
    from hemaflow.pipeline.cli import main

    code = main(["augment", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "hemaflow augment: error:" in err and "absent: no such Dataset folder" in err


def _pbc(ds: Path) -> str:
    return json.loads((ds / "manifest.json").read_text())["source"]
