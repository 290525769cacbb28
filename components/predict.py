"""Stage 8, predict: the class and probabilities of every image of a folder, an .npz or a file.

The model is a Model folder (train or ensemble output) or a bare ``.keras`` file (class names
from a manifest.json beside it, else ``class_0``...). Images are resized to the model's
working size as ingest does. The output is one CSV file, one row per image: the file (or
.npz key and index), the predicted class and the probability of every class. Unlike the
other stages its output is that file, not a folder, so it goes straight into scripts and
spreadsheets; ``-`` writes it to standard output.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from collections import Counter
from typing import Any

import numpy as np

from hemaflow import storage
from hemaflow.config import Config
from hemaflow.data import labelled
from hemaflow.errors import StageError

log = logging.getLogger("hemaflow.predict")

STDOUT = "-"


def predictions_csv(ids: np.ndarray, probs: np.ndarray, class_names: list[str]) -> str:
    """CSV text: file, predicted, then one probability column per class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "predicted", *(f"p_{name}" for name in class_names)])
    for source_id, row in zip(ids, probs, strict=True):
        writer.writerow(
            [source_id, class_names[int(row.argmax())], *(f"{float(p):.6f}" for p in row)]
        )
    return buffer.getvalue()


def run(model: str, source: str, out: str, config: Config) -> dict[str, Any]:
    """Predict every image of ``source`` with ``model``; write the CSV to the file ``out``
    (atomically) or to standard output for ``-``. Returns counts per predicted class."""
    from hemaflow.modeling import inference, loading

    if out != STDOUT:
        storage.check_output(out, "file", inputs=[model, source])
    loaded = loading.load_model(model)
    class_names, size = loading.model_class_names(model, loaded)
    if not size:
        raise StageError(f"{model}: no manifest.json and no fixed input size; cannot resize")
    data = labelled.read_images_for_prediction(source, size)
    log.info("predicting %d images of %s at %d px", len(data.ids), source, size)
    probs = inference.predict_arrays(loaded, data.images, config.evaluate.batch_size)
    text = predictions_csv(data.ids, probs, class_names)
    if out == STDOUT:
        sys.stdout.write(text)
    else:
        storage.write_text_atomic(out, text)
    predicted = Counter(class_names[int(i)] for i in probs.argmax(axis=1))
    return {
        "out": out,
        "images": len(data.ids),
        "predicted": {name: predicted[name] for name in class_names},
    }
