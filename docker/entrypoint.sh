#!/bin/sh
# Runs `hemaflow ARGS...`, unless the first argument is a program on PATH (sh, python3, ...):
# KFP launchers and `docker run IMAGE sh -c ...` replace the command, and must get it verbatim.
set -e
mkdir -p "${HOME:-/tmp/home}" 2>/dev/null || true
case "${1:-}" in
  "" | -*) exec hemaflow "$@" ;;
esac
if [ "$1" != "hemaflow" ] && command -v -- "$1" >/dev/null 2>&1; then
  exec "$@"
fi
[ "$1" = "hemaflow" ] && shift
exec hemaflow "$@"
