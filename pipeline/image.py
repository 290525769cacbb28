"""Build and push hemaflow's container image with the Docker SDK.

The build context is made here rather than by the engine so that a proxy CA can be added to
it (as ``docker/ca/build-ca.pem``, read only by the Dockerfile's builder stage and never copied
into the final image). The build log is streamed; errors the engine reports inside the stream
(build steps and pushes both report failures that way, with HTTP 200) raise :class:`ImageError`.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from hemaflow.errors import HemaflowError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = "hemaflow"
CPU_DOCKERFILE = "docker/Dockerfile"
GPU_DOCKERFILE = "docker/Dockerfile.gpu"
CA_IN_CONTEXT = "docker/ca/build-ca.pem"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

Log = Callable[[str], None]


class ImageError(HemaflowError, RuntimeError):
    """Building, tagging or pushing the image failed; the message carries the engine's reason."""


def docker_client() -> Any:
    """The engine named by the environment (DOCKER_HOST or the local socket), checked alive."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise ImageError(
            f"no Docker engine answers ({exc}); start dockerd or set DOCKER_HOST"
        ) from exc
    return client


def git_revision(root: Path = REPO_ROOT) -> str | None:
    """Short commit of ``root`` with ``-dirty`` when the tree has changes; None outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        rev = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def split_reference(reference: str) -> tuple[str, str | None]:
    """``registry:5000/team/hemaflow:tag`` -> (``registry:5000/team/hemaflow``, ``tag``)."""
    name, _, digestless = reference.partition("@")
    head, sep, tail = name.rpartition(":")
    if sep and "/" not in tail:
        return head, tail
    return name, None


def image_tags(
    version: str, revision: str | None, tag: str | None = None, gpu: bool = False
) -> list[str]:
    """The references one build gets: ``--tag`` (if any), then version and revision tags.

    Version, revision and ``latest`` tags go on the repository of ``tag`` (default
    ``hemaflow``, whose ``latest`` is the config's default ``pipeline.image``); the GPU
    variant's tags end in ``-gpu`` unless its repository's name already does.
    """
    repository, explicit = split_reference(tag) if tag else (DEFAULT_REPOSITORY, None)
    suffix = "-gpu" if gpu and not repository.endswith("-gpu") else ""
    tags = [f"{repository}:{explicit}"] if explicit else []
    tags.append(f"{repository}:{version}{suffix}")
    if revision:
        tags.append(f"{repository}:{revision}{suffix}")
    tags.append(f"{repository}:latest{suffix}")
    return list(dict.fromkeys(tags))


def pip_build_args(
    env: dict[str, str] | None = None, pip_config: dict[str, str] | None = None
) -> dict[str, str]:
    """Proxy and package-index settings of this machine that a build container can use.

    Proxy variables pass through (Docker keeps them out of the image history). Index URLs come
    from PIP_INDEX_URL / PIP_EXTRA_INDEX_URL or pip's configuration; ``file://`` indexes are
    dropped because the build cannot see this machine's files.
    """
    if env is None:
        env = dict(os.environ)
        if pip_config is None:
            pip_config = _pip_config()
    config = pip_config or {}
    args = {k: env[k] for k in PROXY_VARS if env.get(k)}
    for key, conf in (("PIP_INDEX_URL", "index-url"), ("PIP_EXTRA_INDEX_URL", "extra-index-url")):
        value = env.get(key) or config.get(conf, "")
        urls = [u for u in value.split() if urlparse(u).scheme in ("http", "https")]
        if urls:
            args[key] = " ".join(urls)
            if key == "PIP_INDEX_URL":
                args[key] = urls[0]
    return args


def _pip_config() -> dict[str, str]:
    """pip's effective ``global.*`` settings (from ``pip config list``)."""
    import sys

    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    settings = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.partition(".")
        if section in ("global", "install", ":env:"):
            settings[name] = value.strip().strip("'\"")
    return settings


def build_context(root: Path, dockerfile: str, ca_cert: Path | None = None) -> IO[bytes]:
    """A tar of ``root`` filtered by its .dockerignore, plus the proxy CA if given."""
    from docker.utils.build import tar

    ignore = root / ".dockerignore"
    patterns = []
    if ignore.is_file():
        lines = (line.strip() for line in ignore.read_text().splitlines())
        patterns = [line for line in lines if line and not line.startswith("#")]
    if not (root / dockerfile).is_file():
        raise ImageError(f"{root / dockerfile}: no such Dockerfile")
    if ca_cert is not None:
        ca_cert = Path(ca_cert)
        if not ca_cert.is_file():
            raise ImageError(f"{ca_cert}: CA certificate file not found")
        patterns.append(CA_IN_CONTEXT)
    context = tar(str(root), exclude=patterns, dockerfile=(dockerfile, None))
    if ca_cert is not None:
        context.seek(0)
        with tarfile.open(fileobj=context, mode="a") as archive:
            archive.add(str(ca_cert), arcname=CA_IN_CONTEXT)
    context.seek(0)
    return context


def check_stream(events: Iterable[dict], log: Log, what: str) -> list[dict]:
    """Log a decoded engine stream; raise on its ``error``/``errorDetail`` entries."""
    seen: list[dict] = []
    tail: list[str] = []
    for event in events:
        seen.append(event)
        text = event.get("stream") or event.get("status") or ""
        if event.get("progress") is None and text.strip():
            line = f"{text.rstrip()} {event.get('id', '')}".rstrip()
            log(line)
            tail = (tail + [line])[-15:]
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = detail.get("message") or event.get("error") or "unknown error"
            context = "\n".join(tail[-10:])
            raise ImageError(f"{what} failed: {message.strip()}\n{context}".rstrip())
    return seen


def build_image(
    *,
    gpu: bool = False,
    tag: str | None = None,
    base_image: str | None = None,
    ca_cert: Path | None = None,
    root: Path = REPO_ROOT,
    build_args: dict[str, str] | None = None,
    network_mode: str | None = None,
    nocache: bool = False,
    log: Log = print,
    client: Any = None,
) -> tuple[str, list[str]]:
    """Build the CPU (or GPU) image; returns (image id, tags). Raises :class:`ImageError`."""
    import docker
    import hemaflow

    if ca_cert is not None and not Path(ca_cert).is_file():
        # Bad input first: a missing file is reported whether or not an engine answers.
        raise ImageError(f"{ca_cert}: CA certificate file not found")
    client = client or docker_client()
    version = hemaflow.__version__
    revision = git_revision(root)
    tags = image_tags(version, revision, tag, gpu)
    args = {
        **pip_build_args(),
        "VERSION": version,
        "REVISION": revision or "unknown",
        "CREATED": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if base_image:
        args["BASE_IMAGE"] = base_image
    args.update(build_args or {})
    dockerfile = GPU_DOCKERFILE if gpu else CPU_DOCKERFILE
    log(f"building {tags[0]} from {dockerfile} (base {args.get('BASE_IMAGE', 'default')})")
    context = build_context(root, dockerfile, ca_cert)
    try:
        events = client.api.build(
            fileobj=context,
            custom_context=True,
            dockerfile=dockerfile,
            tag=tags[0],
            buildargs=args,
            decode=True,
            rm=True,
            forcerm=True,
            nocache=nocache,
            network_mode=network_mode,
        )
        seen = check_stream(events, log, f"docker build of {tags[0]}")
    except docker.errors.APIError as exc:
        raise ImageError(f"docker build of {tags[0]} failed: {exc.explanation or exc}") from exc
    finally:
        context.close()
    image_id = next((e["aux"]["ID"] for e in reversed(seen) if "ID" in e.get("aux", {})), None)
    if image_id is None:
        raise ImageError(f"docker build of {tags[0]} ended without an image (see the log above)")
    for reference in tags[1:]:
        repository, name = split_reference(reference)
        client.api.tag(image_id, repository, name)
    log(f"built {image_id[:19]} as {', '.join(tags)}")
    return image_id, tags


def push_image(reference: str, log: Log = print, client: Any = None) -> None:
    """Push one reference; raises :class:`ImageError` on any error the registry reports."""
    import docker

    client = client or docker_client()
    repository, name = split_reference(reference)
    try:
        events = client.api.push(repository, tag=name, stream=True, decode=True)
        check_stream(events, log, f"docker push of {reference}")
    except docker.errors.APIError as exc:
        raise ImageError(f"docker push of {reference} failed: {exc.explanation or exc}") from exc
    log(f"pushed {reference}")
