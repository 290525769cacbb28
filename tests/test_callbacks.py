"""What a fit shows: one progress line per epoch in a log, TensorBoard event files with tags."""

from __future__ import annotations

import io
import re
from pathlib import Path

from hemaflow.config import load_config
from hemaflow.modeling import fitting
from hemaflow.progress import Progress, progress
from tests.helpers import tiny_cnn


def _event_tags(folder: Path) -> set[str]:
    import tensorflow as tf

    return {
        value.tag
        for path in folder.glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }


def _tiny_fit(callbacks, epochs=3):
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    labels = np.eye(8, dtype=np.float32)[rng.integers(0, 8, 48)]
    model = tiny_cnn()
    fitting.compile_model(model, fitting.make_optimizer("adam", 1e-3, "cosine", epochs * 3))
    model.fit(
        images,
        labels,
        batch_size=16,
        epochs=epochs,
        validation_data=(images[:16], labels[:16]),
        callbacks=callbacks,
        verbose=0,
    )
    return model


def test_fit_progress_writes_one_line_per_epoch_to_a_log():
    from hemaflow.modeling.callbacks import FitProgress

    stream = io.StringIO()
    callback = FitProgress(images_per_epoch=48, label="trial 2/5", stream=stream)
    _tiny_fit([callback], epochs=3)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3, lines
    for k, line in enumerate(lines, 1):
        assert line.startswith(f"trial 2/5 epoch {k}/3: 3/3 step"), line
        assert re.search(r"loss=\d\.\d{4} accuracy=\d\.\d{4} val_loss=", line), line
        assert "images/s), ETA" in line, line
    assert len(callback.rates) == 3 and all(r > 0 for r in callback.rates)


def test_a_steady_epoch_times_the_first_steps_at_the_pace_of_the_rest(monkeypatch):
    """An epoch of 8 steps whose first traces for 10 s, then 1 s a step, then 2 s of
    validation: 19 s on the clock, 10 s steady (8 steps at 1 s, plus validation)."""
    from hemaflow.modeling import callbacks
    from hemaflow.modeling.callbacks import FitProgress

    clock = iter([0.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 19.0])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    callback = FitProgress(images_per_epoch=64, stream=io.StringIO())
    callback.set_params({"epochs": 1, "steps": 8})
    callback.on_epoch_begin(0)
    for step in range(8):
        callback.on_train_batch_end(step)
    callback.on_epoch_end(0)
    assert callback.rates == [64 / 19.0]
    assert callback.steady_seconds == [10.0]


def test_progress_in_a_log_is_whole_lines():
    stream = io.StringIO()
    bar = Progress(4, "corruptions", stream=stream, log_interval=0.0)
    for n in range(1, 5):
        bar.update_to(n)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[-1].startswith("corruptions: 4/4 it [") and len(lines) == 4
    assert list(progress(range(3), desc="x")) == [0, 1, 2]


def test_tensorboard_logs_scalars_images_and_confusion_matrix(tmp_path):
    import numpy as np

    from hemaflow.modeling.callbacks import TensorBoard

    rng = np.random.default_rng(1)
    sample = (rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), np.eye(8)[range(8)])
    val = [(sample[0], sample[1])]
    names = [f"class{i}" for i in range(8)]
    _tiny_fit([TensorBoard(tmp_path, 48, names, sample, val_data=val)], epochs=2)
    train = _event_tags(tmp_path / "train")
    assert {
        "epoch_loss",
        "epoch_accuracy",
        "epoch_learning_rate",
        "epoch_images_per_second",
        "training_images",
    } <= train, train
    assert {"epoch_loss", "epoch_accuracy", "confusion_matrix"} <= _event_tags(
        tmp_path / "validation"
    )


def test_run_phase_logs_into_its_folder_and_a_finished_phase_adds_nothing(pbc_tfrecords, tmp_path):
    config = load_config("quickstart", overrides={"model.batch_size": 64})
    s = fitting.setup(str(pbc_tfrecords), "small_cnn", config, max_train_images=128)
    hp = fitting.default_hparams(config)
    train_ds, val_ds, _ = fitting.data(s, config.seed)
    with s.strategy.scope():
        model = fitting.build(s, config, hp)
    fitting.compile_phase(s, model, hp, 1e-3, 2)
    logs = tmp_path / "tb" / "compare"

    def phase():
        tb = fitting.tensorboard(s, logs, config.seed)
        return fitting.run_phase(
            model, "compare", tmp_path / "work", train_ds, val_ds, 2, 128, tensorboard=tb
        )

    phase()
    assert {"epoch_loss", "epoch_learning_rate", "epoch_images_per_second"} <= _event_tags(
        logs / "train"
    )
    assert "confusion_matrix" in _event_tags(logs / "validation")
    files = sorted(p.name for p in logs.rglob("events.out.tfevents.*"))
    phase()  # done.json: nothing is trained or logged again
    assert sorted(p.name for p in logs.rglob("events.out.tfevents.*")) == files
    staging = tmp_path / "staging"
    fitting.publish_tensorboard(tmp_path / "tb", staging)
    assert (staging / fitting.TENSORBOARD_DIR / "compare" / "train").is_dir()
