"""What a fit shows while it runs: progress with ETA, and TensorBoard logs.

Every fit of compare, tune and train gets :class:`FitProgress` (Keras itself runs with
``verbose=0``) and :class:`TensorBoard`. Import this module inside functions: it imports Keras.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from typing import Any, TextIO

import keras
import numpy as np

from hemaflow.progress import Progress

#: What a training step's line shows; an epoch's line shows every metric Keras logged.
STEP_METRICS = ("loss", "accuracy")


def _shown(logs: dict[str, Any] | None, keys: Sequence[str] | None = None) -> str:
    """``loss=... accuracy=... val_loss=...``: training metrics first, each loss first."""
    names = sorted(logs or {}, key=lambda k: (k.startswith("val_"), not k.endswith("loss"), k))
    return " ".join(
        f"{k}={float(logs[k]):.4f}"  # type: ignore[index]
        for k in names
        if (keys is None or k in keys) and isinstance(logs[k], int | float | np.floating)  # type: ignore[index]
    )


class FitProgress(keras.callbacks.Callback):
    """Epoch k of n with loss, accuracy, images/s and ETA, through :class:`Progress`.

    On a terminal each epoch is a live bar over its steps; in a log (CI, a pod) one line per
    epoch, plus one per ``interval`` seconds of a long epoch. ``label`` goes in front (a
    tuner sets "trial i/n"). Training images/s of each epoch are kept in ``rates``, and in
    ``steady_seconds`` each epoch's seconds with its first quarter of steps (graph tracing,
    cache filling) timed at the pace of the rest: a one-epoch fit's steady epoch, which a
    time-limited plan scales to train's epochs.
    """

    def __init__(
        self,
        images_per_epoch: int = 0,
        label: str = "",
        stream: TextIO | None = None,
        interval: float = 60.0,
    ) -> None:
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.label = label
        self.stream = stream  # None: stderr when used (a tuner deep-copies callbacks)
        self.interval = interval
        self.rates: list[float] = []
        self.steady_seconds: list[float] = []
        self._seconds: list[float] = []
        self._mark: tuple[int, float] | None = None  # (steps done, time) after the first quarter
        self._last: tuple[int, float] | None = None  # (steps done, time) at the latest step
        self._bar: Progress | None = None
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        desc = " ".join(filter(None, [self.label, f"epoch {epoch + 1}/{self.params['epochs']}"]))
        steps = self.params.get("steps")
        self._bar = Progress(steps, desc, "step", self.stream, log_interval=self.interval)
        self._start = time.perf_counter()
        self._mark = self._last = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self._last = (batch + 1, now)
        if batch + 1 == max(2, (self.params.get("steps") or 8) // 4):
            self._mark = self._last
        if self._bar is not None:
            self._bar.update_to(batch + 1, _shown(logs, STEP_METRICS))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        end = time.perf_counter()
        seconds = end - self._start
        self._seconds.append(seconds)
        self.steady_seconds.append(seconds)
        if self._mark is not None and self._last is not None and self._last[0] > self._mark[0]:
            (marked, at), (done, last) = self._mark, self._last
            per_step = (last - at) / (done - marked)
            self.steady_seconds[-1] = min(seconds, per_step * done + (end - last))
        timing = f"{seconds:.0f} s"
        if self.images_per_epoch:
            self.rates.append(self.images_per_epoch / max(seconds, 1e-9))
            timing += f", {self.rates[-1]:.1f} images/s"
        # The first epoch also traces the graph and fills the cache: leave it out if possible.
        steady = self._seconds[1:] or self._seconds
        left = (self.params["epochs"] - epoch - 1) * sum(steady) / len(steady)
        eta = Progress.format_interval(left)
        if self._bar is not None:
            self._bar.close(f"{_shown(logs)} ({timing}), ETA {eta}")
            self._bar = None

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._bar is not None:  # stopped inside an epoch
            self._bar.close()
            self._bar = None


class Deadline(keras.callbacks.Callback):
    """Stop a fit at a wall-clock ``deadline`` (epoch seconds) that a time-limited plan set.

    An epoch that would not end before the deadline (at the pace of the last one) is not
    started; should one run over all the same, training stops after the batch that crossed
    it (Keras still validates that epoch). The best weights so far are what the phase keeps
    (:func:`hemaflow.modeling.fitting.run_phase` restores its best checkpoint). Whether the
    deadline stopped the fit and how many epochs ran to their end stay on the callback.
    """

    def __init__(self, deadline: float, clock: Any = time.time) -> None:
        super().__init__()
        self.deadline = float(deadline)
        self.clock = clock
        self.stopped = False
        self.completed_epochs = 0
        self.cut_epochs = 0  # ended early by the deadline (Keras still validated them)
        self._epoch_start = 0.0
        self._cut = False
        self._last = 0.0

    def _stop(self) -> None:
        self.stopped = True
        self.model.stop_training = True

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.clock() >= self.deadline:
            self._stop()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start, self._cut = self.clock(), False
        if self._epoch_start >= self.deadline:
            self._cut = True
            self._stop()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.clock() >= self.deadline:
            self._cut = True
            self._stop()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = self.clock()
        if self._cut:
            self.cut_epochs += 1
            return
        self.completed_epochs += 1
        self._last = now - self._epoch_start
        if now + self._last > self.deadline and epoch + 1 < self.params.get("epochs", 0):
            self._stop()


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras's epoch scalars (loss, accuracy, val_*, learning rate) and what it lacks.

    Adds ``epoch_images_per_second``, a grid of training images as the model sees them
    (``training_images``, at the start) and, given ``val_data``, the val confusion matrix
    (``confusion_matrix``, at the end). Histograms, the graph and profiling stay off: they
    cost more than they show here. Event files are flushed every epoch, so a killed run keeps
    its curves, and a resumed one writes the remaining epochs into a new file beside them.
    The class keeps Keras's name: keras-tuner gives a callback named ``TensorBoard`` one run
    folder per trial (``LOG_DIR/TRIAL/executionK``) and logs the trial's hyperparameters.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        images_per_epoch: int,
        class_names: Sequence[str],
        sample: tuple[np.ndarray, np.ndarray] | None = None,
        val_data: Any = None,
    ) -> None:
        super().__init__(str(log_dir), histogram_freq=0, write_graph=False, profile_batch=0)
        self.images_per_epoch = images_per_epoch
        self.class_names = list(class_names)
        self.sample = sample
        self.val_data = val_data
        self._start = 0.0

    def __deepcopy__(self, memo: dict) -> TensorBoard:
        # keras-tuner copies callbacks for every trial; the datasets are shared, not copied.
        clone = copy.copy(self)
        clone._writers, clone._prev_summary_state = {}, []
        return clone

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self.sample is not None:
            images, labels = self.sample
            titles = [self.class_names[i] for i in np.argmax(labels, axis=-1)]
            self._image(self._train_writer, "training_images", _grid(images, titles), 0)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_begin(epoch, logs)
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        rate = self.images_per_epoch / max(time.perf_counter() - self._start, 1e-9)
        super().on_epoch_end(epoch, {**(logs or {}), "images_per_second": rate})
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        super().on_train_end(logs)
        if self.val_data is not None and self.model is not None:
            self.write_confusion_matrix(self.model, self.val_data)

    def write_confusion_matrix(self, model: Any, val_data: Any, step: int = 0) -> None:
        """The confusion matrix of ``model`` on ``val_data`` (batches of images, soft labels)."""
        import tensorflow as tf

        from hemaflow.modeling import metrics
        from hemaflow.reporting import plots

        true, predicted = [], []
        for images, labels in val_data:
            predicted.append(np.argmax(model.predict_on_batch(images), axis=-1))
            true.append(np.argmax(np.asarray(labels), axis=-1))
        matrix = metrics.confusion_matrix(
            np.concatenate(true), np.concatenate(predicted), len(self.class_names)
        )
        png = plots.confusion_matrix_png(matrix, self.class_names, "val")
        # Keras closed its writers at the end of fit: this one is the callback's own.
        writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "validation"))
        self._image(writer, "confusion_matrix", png, step)
        writer.close()

    @staticmethod
    def _image(writer: Any, tag: str, png: bytes, step: int) -> None:
        import tensorflow as tf

        with writer.as_default():
            tf.summary.image(tag, tf.io.decode_png(png, channels=3)[None], step=step)
        writer.flush()


def _grid(images: np.ndarray, titles: list[str]) -> bytes:
    from hemaflow.reporting import plots

    return plots.image_grid(np.asarray(images, dtype=np.uint8), titles, columns=8)
