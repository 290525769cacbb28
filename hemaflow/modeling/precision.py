"""Which Keras dtype policy a backbone trains under, on the hardware at hand.

bfloat16 only pays on a CPU with native bf16 matrix units (AMX, AVX-512-BF16): there dense
and plain convolutions (ResNets, VGG, the small from-scratch nets) train about twice as fast,
while depthwise convolutions (MobileNet, EfficientNet, ConvNeXt) have no fast bf16 kernels and
run about twice as slow. Without those units bf16 is emulated and always slower. On a GPU
mixed precision is the norm. The final softmax stays float32 under every policy (see zoo).
"""

from __future__ import annotations

import contextlib
import os
import typing
from collections.abc import Iterator
from pathlib import Path

from hemaflow.config import ConfigError, Precision

# The policies model.precision may name, besides "auto".
POLICIES: tuple[str, ...] = tuple(p for p in typing.get_args(Precision) if p != "auto")
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# Backbone name prefixes built mainly from depthwise convolutions (slow in bf16 on a CPU).
DEPTHWISE_PREFIXES = ("mobilenet", "efficientnet", "convnext")


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU listed in ``cpuinfo`` (empty where unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16(flags: frozenset[str] | set[str]) -> bool:
    """Whether the CPU has native bf16 matrix instructions."""
    return bool(BF16_CPU_FLAGS & set(flags))


def is_depthwise(backbone: str) -> bool:
    return backbone.lower().startswith(DEPTHWISE_PREFIXES)


def choose_policy(
    backbone: str,
    requested: str = "auto",
    device: str = "cpu",
    flags: frozenset[str] | set[str] | None = None,
) -> str:
    """The dtype policy for ``backbone``: ``requested`` unless it is ``auto``.

    ``device`` is ``"cpu"`` or ``"gpu"``; ``flags`` are CPU flags (read from /proc/cpuinfo
    when None), passed in so that the decision is testable for any machine.
    """
    if requested != "auto":
        if requested not in POLICIES:
            raise ConfigError(
                f"model.precision: {requested!r} is not one of auto, {', '.join(POLICIES)}"
            )
        return requested
    if device == "gpu":
        return "mixed_float16"
    if device != "cpu":
        raise ValueError(f"device: {device!r} is not 'cpu' or 'gpu'")
    if flags is None:
        flags = cpu_flags()
    if cpu_has_fast_bf16(flags) and not is_depthwise(backbone):
        return "mixed_bfloat16"
    return "float32"


def current_device() -> str:
    """``"gpu"`` when TensorFlow sees a GPU, else ``"cpu"``."""
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def policy_for(backbone: str, requested: str = "auto") -> str:
    """:func:`choose_policy` for this machine."""
    return choose_policy(backbone, requested, current_device())


@contextlib.contextmanager
def policy_scope(policy: str) -> Iterator[None]:
    """Set Keras's global dtype policy for the layers created inside, then restore it."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
