"""Pretrained weights without internet: Keras's file names, mirrors (local and gs://), fetch,
verification, and one-line errors for every bad input; nothing leaves 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import random
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from hemaflow.modeling import weights, zoo

SIZE = 32
V3 = "mobilenet_v3_small"  # Keras publishes an md5 for its file
V2 = "mobilenet_v2"  # Keras publishes no hash for its file
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


# --------------------------------------------------------------------------- no internet


@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
    """Fail the test, loudly and uncatchably by `except Exception`, on any connection or name
    lookup that is not for this machine."""
    attempts: list[str] = []

    def refuse(where: str) -> None:
        attempts.append(where)
        pytest.fail(f"a test tried to reach {where}; nothing may leave 127.0.0.1")

    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in LOCAL_HOSTS:
            refuse(f"{address[0]}:{address[1]}")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_HOSTS and host is not None:
            refuse(str(host))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield
    assert not attempts, f"connections outside 127.0.0.1: {attempts}"


# --------------------------------------------------------------------------- served files


def _save_legacy_h5(model, path: Path) -> None:
    """Write weights as Keras's published files are: the legacy HDF5 layout."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


def _randomized_backbone(backbone: str, seed: int, channels: int = 3):
    """A backbone as the zoo builds it, with random weights no initializer would give."""
    import keras

    spec = zoo.backbone_spec(backbone)
    model = getattr(keras.applications, spec.constructor)(
        include_top=False,
        weights=None,
        input_shape=(SIZE, SIZE, channels),
        **dict(spec.kwargs),
    )
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") for w in model.get_weights()])
    return model


def _discover(backbone: str, image_size: int) -> weights.KerasFile:
    """What Keras downloads for ``backbone``, looked up the way the zoo does (patched or not)."""
    return weights.discover(backbone, image_size, zoo.backbone_spec(backbone))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """Keras-named files of two real backbones, and their weights, in a served folder."""
    root = tmp_path_factory.mktemp("origin")
    saved = {}
    for seed, backbone in enumerate((V3, V2)):
        model = _randomized_backbone(backbone, seed)
        _save_legacy_h5(model, root / _discover(backbone, SIZE).fname)
        saved[backbone] = model.get_weights()
    return root, saved


@pytest.fixture(scope="module")
def server(origin):
    """A local HTTP server in a thread standing in for Keras's origin."""
    root, _ = origin

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def served(origin, server, monkeypatch):
    """Discovery pointed at the local server, with each published hash replaced by the
    served file's (a real published hash would not match a generated file)."""
    root, saved = origin
    real = weights.discover

    def discover(backbone: str, image_size: int, spec) -> weights.KerasFile:
        found = real(backbone, image_size, spec)
        local = root / found.fname
        file_hash = _md5(local) if found.file_hash and local.exists() else found.file_hash
        return weights.KerasFile(
            backbone, image_size, found.fname, f"{server}/{found.fname}", file_hash
        )

    monkeypatch.setattr(weights, "discover", discover)
    return saved


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    from hemaflow.pipeline.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"hemaflow {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _assert_backbone_weights(model, expected: list[np.ndarray]) -> None:
    got = zoo.backbone_of(model).get_weights()
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- discovery


def test_discovery_asks_keras_for_its_own_names_without_downloading():
    import keras  # noqa: F401 - importing it seeds the RNG; the discovery itself must not

    state = random.getstate()
    v3 = _discover(V3, SIZE)
    assert v3.fname == "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    assert v3.origin.startswith("https://storage.googleapis.com/") and v3.origin.endswith(v3.fname)
    assert v3.algorithm == "md5" and len(v3.file_hash) == 32
    v2 = _discover(V2, 96)
    assert v2.fname == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    assert v2.file_hash is None and v2.algorithm is None
    assert random.getstate() == state  # later models get the same initial weights
    assert weights.weights_kind("gs://b/keras-weights") == "mirror"
    assert weights.weights_kind("gs://b/one/resnet50.h5") == "file"
    assert weights.weights_kind("imagenet") == "imagenet"


def test_imagenet_uses_the_keras_file_name_not_the_model_name(origin, monkeypatch):
    """With name="backbone", EfficientNet and ConvNeXt would ask for backbone_notop.h5."""
    import keras

    root, saved = origin
    asked = []

    def get_file(fname, origin, file_hash=None, cache_subdir="datasets", **kwargs):
        asked.append((fname, origin, file_hash, cache_subdir))
        return str(root / fname)

    monkeypatch.setattr(keras.utils, "get_file", get_file)
    model = zoo.build_model(V3, 8, SIZE, weights="imagenet")
    found = _discover(V3, SIZE)
    assert asked == [(found.fname, found.origin, found.file_hash, "models")]
    _assert_backbone_weights(model, saved[V3])


# --------------------------------------------------------------------------- fetch and load


def test_fetch_to_a_local_mirror_then_build_from_it(served, tmp_path, capsys):
    mirror = tmp_path / "mirror"
    code, out, err = _run(
        ["weights", "fetch", "--backbone", V3, V2, "--image-size", str(SIZE), "--to", str(mirror)],
        capsys,
    )
    assert code == 0, err
    assert "no published hash" in out
    index = json.loads((mirror / weights.INDEX).read_text())
    v3, v2 = _discover(V3, SIZE), _discover(V2, SIZE)
    entry = index["backbones"][V3][v3.fname]
    assert entry["hash"] == v3.file_hash and entry["published"] and entry["algorithm"] == "md5"
    assert entry["bytes"] == (mirror / v3.fname).stat().st_size
    no_hash = index["backbones"][V2][v2.fname]
    assert not no_hash["published"] and no_hash["algorithm"] == "sha256"
    assert not list(mirror.glob(".*.part"))
    for backbone in (V3, V2):
        model = zoo.build_model(backbone, 8, SIZE, weights=str(mirror))
        _assert_backbone_weights(model, served[backbone])


@pytest.mark.gcs
def test_fetch_to_gcs_then_build_from_it(served, gcs_bucket, capsys):
    mirror = f"{gcs_bucket}/keras-weights"
    code, _, err = _run(
        ["weights", "fetch", "--backbone", V3, "--image-size", str(SIZE), "--to", mirror], capsys
    )
    assert code == 0, err
    from hemaflow import storage

    assert storage.exists(f"{mirror}/{weights.INDEX}")
    model = zoo.build_model(V3, 8, SIZE, weights=mirror)
    _assert_backbone_weights(model, served[V3])
    code, _, err = _run(
        ["weights", "check", "--backbone", V3, "--image-size", str(SIZE)]
        + ["--set", f"model.weights={mirror}"],
        capsys,
    )
    assert code == 0, err


def test_fetch_refuses_a_file_that_fails_the_published_hash(origin, server, tmp_path, capsys):
    """The real published md5 against a generated file: nothing reaches the mirror."""
    mirror = tmp_path / "mirror"
    code, _, err = _run(
        ["weights", "fetch", "--backbone", V3, "--image-size", str(SIZE), "--to", str(mirror)]
        + ["--from", server],
        capsys,
    )
    assert code == 1
    line = _one_line_error(err, "weights")
    published = _discover(V3, SIZE).file_hash
    assert V3 in line and _discover(V3, SIZE).fname in line and published in line
    assert "md5" in line
    assert not mirror.exists() or not [p for p in mirror.iterdir()]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("backbone", "needle"),
    [("resnet9000", "unknown"), ("resnet_mini", "from scratch"), ("small_cnn", "from scratch")],
)
def test_fetch_refuses_backbones_without_keras_files(backbone, needle, tmp_path, capsys):
    mirror = tmp_path / "mirror"
    code, _, err = _run(["weights", "fetch", "--backbone", backbone, "--to", str(mirror)], capsys)
    assert code == 1
    line = _one_line_error(err, "weights")
    assert backbone in line and needle in line
    assert not mirror.exists()


@pytest.fixture
def filled_mirror(served, tmp_path, capsys) -> Path:
    mirror = tmp_path / "mirror"
    argv = ["weights", "fetch", "--backbone", V3, "--image-size", str(SIZE), "--to", str(mirror)]
    assert _run(argv, capsys)[0] == 0
    return mirror


def _corrupt(mirror: Path) -> str:
    """Replace the mirrored file by other weights of the same backbone."""
    _save_legacy_h5(_randomized_backbone(V3, 7), mirror / _discover(V3, SIZE).fname)
    return "fails its md5 check"


def _wrong_backbone(tmp_path: Path) -> Path:
    path = tmp_path / "other.h5"
    _save_legacy_h5(_randomized_backbone(V2, 3), path)
    return path


def _wrong_input_shape(tmp_path: Path) -> Path:
    path = tmp_path / "gray.h5"
    _save_legacy_h5(_randomized_backbone(V3, 4, channels=1), path)
    return path


@pytest.mark.parametrize(
    "case",
    ["missing mirror", "missing file", "hash mismatch", "wrong backbone", "wrong shape", "not h5"],
)
def test_stage_refuses_bad_weights_before_training(
    case, filled_mirror, pbc_tfrecords, tmp_path, capsys
):
    mirror, fname = filled_mirror, _discover(V3, SIZE).fname
    needle: tuple[str, ...]
    if case == "missing mirror":
        value, needle = str(tmp_path / "nowhere"), ("does not exist", fname)
    elif case == "missing file":
        (mirror / fname).unlink()
        value, needle = str(mirror), ("has no", fname, "hemaflow weights fetch")
    elif case == "hash mismatch":
        value, needle = str(mirror), (_corrupt(mirror), fname, weights.INDEX)
    elif case == "wrong backbone":
        value = str(_wrong_backbone(tmp_path))
        needle = ("does not fit", "other.h5")
    elif case == "wrong shape":
        value = str(_wrong_input_shape(tmp_path))
        needle = ("does not fit", "gray.h5")
    else:
        (tmp_path / "notes.h5").write_text("not weights")
        value, needle = str(tmp_path / "notes.h5"), ("not a readable weights file", "notes.h5")
    out = tmp_path / "compare"
    code, _, err = _run(
        ["compare", str(pbc_tfrecords), "--backbone", V3, "--out", str(out)]
        + ["--set", f"model.weights={value}", "--set", "compare.epochs=1"],
        capsys,
    )
    assert code == 1
    line = _one_line_error(err, "compare")
    assert V3 in line
    for text in needle:
        assert text in line, line
    assert not out.exists()  # nothing trained, nothing written


def test_pipeline_refuses_a_mirror_without_every_candidate(filled_mirror, tmp_path):
    from hemaflow.pipeline import steps

    from hemaflow.config import load_config

    def request(mirror: str, backbones: list[str]):
        return load_config(
            overrides={
                "model.backbones": backbones,
                "model.weights": mirror,
                "data.image_size": SIZE,
                "compare.top_k": 1,
            }
        )

    steps.validate_request(request(str(filled_mirror), [V3, "resnet_mini"]))
    with pytest.raises(weights.MissingWeightsError, match=f"'{V2}'.*has no"):
        steps.validate_request(request(str(filled_mirror), [V3, V2]))
    with pytest.raises(weights.MissingWeightsError, match="does not exist"):
        steps.validate_request(request(str(tmp_path / "nowhere"), [V3]))
