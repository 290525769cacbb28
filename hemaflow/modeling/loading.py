"""Load exported models safely: Model folders or .keras files, local or gs://.

A Model folder is read only when complete (it carries its ``_COMPLETE`` marker); a .keras file
named directly is taken as it is.

Loading always uses ``safe_mode=True``, so a model carrying arbitrary Python (a Lambda layer)
is refused rather than executed. hemaflow's custom layers (:mod:`hemaflow.modeling.layers`)
are registered first, so every model hemaflow exports loads by name.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from hemaflow import storage
from hemaflow.errors import HemaflowError
from hemaflow.modeling.export import MODEL_FILE
from hemaflow.modeling.layers import register_layers

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class ModelError(HemaflowError, ValueError):
    """A model path is missing, of the wrong kind, or refused by safe loading."""


def resolve_model_file(path: str | os.PathLike) -> Path:
    """The local .keras file behind ``path`` (a Model folder or a .keras file), checked for kind."""
    uri = str(path)
    if not uri.endswith(".keras"):  # a Model folder must be complete; a bare .keras is no folder
        storage.require_complete(uri, "Model folder")
        if storage.is_gcs(uri):
            uri = storage.join(uri, MODEL_FILE)  # fetch only its archive
    try:
        local = storage.local_path(uri)
    except storage.StorageError as exc:
        raise ModelError(f"{path}: no such model file or folder") from exc
    if local.is_dir():
        candidate = local / MODEL_FILE
        if not candidate.is_file():
            raise ModelError(
                f"{path}: not a hemaflow Model folder (no {MODEL_FILE}; expected the output "
                "of the train or ensemble stage)"
            )
        local = candidate
    with open(local, "rb") as handle:
        head = handle.read(8)
    if head == _HDF5_MAGIC:
        raise ModelError(
            f"{path}: a legacy HDF5 (.h5) model; hemaflow loads Keras 3 .keras archives only"
        )
    if not zipfile.is_zipfile(local):
        raise ModelError(f"{path}: not a Keras 3 .keras archive (not a zip file)")
    with zipfile.ZipFile(local) as archive:
        names = set(archive.namelist())
    if "config.json" not in names:
        raise ModelError(f"{path}: a zip file but not a Keras 3 .keras archive (no config.json)")
    return local


def load_model(path: str | os.PathLike):
    """Load a Keras model from a Model folder or a .keras file with safe_mode=True."""
    import keras

    local = resolve_model_file(path)
    register_layers()
    try:
        return keras.saving.load_model(local, safe_mode=True, compile=False)
    except (ValueError, TypeError) as exc:
        message = " ".join(str(exc).split())
        if "Lambda" in message or "safe_mode" in message:
            raise ModelError(
                f"{path}: refused by safe loading: the model contains a Lambda layer or other "
                "arbitrary Python code; rebuild it from registered layers"
            ) from exc
        raise ModelError(f"{path}: could not load the model: {message[:500]}") from exc


def read_model_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a Model folder (or of the folder holding a .keras file)."""
    uri = str(path)
    if storage.is_gcs(uri):
        folder = uri.rsplit("/", 1)[0] if uri.endswith(".keras") else uri
    else:
        local = Path(uri).expanduser()
        if not local.exists():
            raise ModelError(f"{path}: no such model file or folder")
        folder = str(local if local.is_dir() else local.parent)
    return storage.read_json(
        folder,
        storage.MANIFEST,
        "hemaflow Model folder",
        error=ModelError,
        kind="model",
        required=("class_names", "image_size"),
    )


def model_class_names(path: str | os.PathLike, model=None) -> tuple[list[str], int]:
    """Class names and working size from the manifest, else from the model's shapes.

    A bare .keras file without a manifest falls back to ``class_0..class_{n-1}`` and the
    model's input size, so it can still be evaluated against data with matching classes.
    """
    try:
        manifest = read_model_manifest(path)
        return list(manifest["class_names"]), int(manifest["image_size"])
    except ModelError:
        if model is None:
            raise
    width = int(model.outputs[0].shape[-1])
    size = model.inputs[0].shape[1]
    return [f"class_{i}" for i in range(width)], int(size) if size else 0
