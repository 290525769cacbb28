"""Run one stage command inside the project image, the way a cluster pod runs it.

Local paths among the stage's arguments are bind-mounted at the same absolute path: inputs
read-only, and for outputs the parent folder read-write (a stage stages its output beside the
final folder and renames it into place, which needs both on one mount). The container runs as
the calling user, so outputs belong to them. gs:// paths pass through unchanged; Google
credentials reach the container the way they reach a pod: a key file named by
GOOGLE_APPLICATION_CREDENTIALS or gcloud's application-default login, mounted read-only, or
the emulator named by STORAGE_EMULATOR_HOST. Their content is never logged. Folders of site
profiles (HEMAFLOW_PROFILES) are mounted read-only, so ``--profile`` means the same inside.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hemaflow.config import PROFILES_ENV

OUTPUT_OPTIONS = frozenset({"--out", "-o", "--out-dir", "--output", "--output-dir"})
PASS_ENV = ("GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST", "HEMAFLOW_PBC128")
CREDENTIALS_IN_CONTAINER = "/var/run/secrets/hemaflow/google-credentials.json"
GCLOUD_ADC = Path("~/.config/gcloud/application_default_credentials.json")
CONTAINER_HOME = "/tmp/home"


@dataclass
class ContainerSpec:
    """Everything ``docker run`` needs: the command, its mounts, its environment."""

    command: list[str]
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    network_mode: str | None = None
    user: str | None = None


def _mount(volumes: dict[str, dict[str, str]], path: Path, mode: str) -> None:
    current = volumes.get(str(path))
    if current is None or mode == "rw":
        volumes[str(path)] = {"bind": str(path), "mode": mode}


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith(".") or value.startswith("~")


def plan_container(
    stage: str, args: Sequence[str], env: dict[str, str] | None = None
) -> ContainerSpec:
    """Rewrite ``hemaflow STAGE ARGS`` for a container: absolute paths, mounts, environment.

    Pure: looks at the file system only to tell which arguments are existing local paths.
    """
    env = dict(os.environ if env is None else env)
    volumes: dict[str, dict[str, str]] = {}
    command = [stage]
    previous = ""
    for token in args:
        if token.startswith("--") and "=" in token:
            option, _, value = token.partition("=")
            command.append(f"{option}={_map_path(value, option, volumes)}")
            previous = ""
        elif token.startswith("-"):
            command.append(token)
            previous = token
        else:
            command.append(_map_path(token, previous, volumes))
            previous = ""
    spec = ContainerSpec(command=command, volumes=volumes)
    if hasattr(os, "getuid"):
        spec.user = f"{os.getuid()}:{os.getgid()}"
    spec.environment = {k: env[k] for k in PASS_ENV if env.get(k)}
    _add_credentials(spec, env)
    _add_site_profiles(spec, env)
    emulator = env.get("STORAGE_EMULATOR_HOST", "")
    host = urlparse(emulator if "://" in emulator else f"http://{emulator}").hostname
    if host in ("localhost", "127.0.0.1", "::1"):
        spec.network_mode = "host"  # the emulator listens on this machine's loopback
    return spec


def _map_path(value: str, option: str, volumes: dict[str, dict[str, str]]) -> str:
    """The container-side spelling of one argument value, mounting it if it is a local path."""
    if value == "-" or "://" in value:  # standard input/output, or a URI
        return value
    if option == "--set":
        key, eq, inner = value.partition("=")
        if eq and _looks_like_path(inner) and Path(inner).expanduser().exists():
            return f"{key}={_map_path(inner, '', volumes)}"
        return value
    if option in OUTPUT_OPTIONS:
        target = Path(value).expanduser().resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        _mount(volumes, target.parent, "rw")
        return str(target)
    if _looks_like_path(value) and Path(value).expanduser().exists():
        source = Path(value).expanduser().resolve()
        _mount(volumes, source, "ro")
        return str(source)
    return value


def _add_credentials(spec: ContainerSpec, env: dict[str, str]) -> None:
    key_file = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GOOGLE_APPLICATION_CREDENTIALS={key_file}: no such file")
        spec.volumes[str(path.resolve())] = {"bind": CREDENTIALS_IN_CONTAINER, "mode": "ro"}
        spec.environment["GOOGLE_APPLICATION_CREDENTIALS"] = CREDENTIALS_IN_CONTAINER
        return
    adc = GCLOUD_ADC.expanduser()
    if adc.is_file():
        target = f"{CONTAINER_HOME}/.config/gcloud/{adc.name}"
        spec.volumes[str(adc.resolve())] = {"bind": target, "mode": "ro"}


def _add_site_profiles(spec: ContainerSpec, env: dict[str, str]) -> None:
    named = [
        Path(p).expanduser().resolve() for p in env.get(PROFILES_ENV, "").split(os.pathsep) if p
    ]
    found = [folder for folder in named if folder.is_dir()]
    for folder in found:
        _mount(spec.volumes, folder, "ro")
    if found:
        spec.environment[PROFILES_ENV] = os.pathsep.join(map(str, found))


def run_stage(
    image: str,
    stage: str,
    args: Sequence[str],
    log: Callable[[str], None] = print,
    client: Any = None,
) -> int:
    """Run ``hemaflow STAGE ARGS`` in ``image``; streams its output, returns its exit code."""
    from hemaflow.pipeline.image import ImageError, docker_client

    import docker

    client = client or docker_client()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound as exc:
        raise ImageError(
            f"image {image!r} not found locally; build it with 'hemaflow image build'"
        ) from exc
    spec = plan_container(stage, args)
    for host, bind in sorted(spec.volumes.items()):
        if "secrets" not in bind["bind"] and "gcloud" not in bind["bind"]:
            log(f"mount {host} -> {bind['bind']} ({bind['mode']})")
    container = client.containers.run(
        image,
        command=spec.command,
        volumes=spec.volumes,
        environment=spec.environment,
        network_mode=spec.network_mode,
        user=spec.user,
        detach=True,
    )
    try:
        for chunk in container.logs(stream=True, follow=True):
            log(chunk.decode(errors="replace").rstrip("\n"))
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)
