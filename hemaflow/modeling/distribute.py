"""The tf.distribute strategy for the environment a stage runs in.

- ``TF_CONFIG`` set (a multi-node job on Kubeflow/Vertex): MultiWorkerMirroredStrategy,
- several GPUs on one node: MirroredStrategy,
- otherwise (one GPU, or a CPU): the default strategy.

Stage code builds and compiles models inside ``strategy.scope()`` and feeds batches of
:func:`global_batch_size`, so nothing assumes one device.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from hemaflow.config import ConfigError


def strategy_kind(env: Mapping[str, str], gpus: int) -> str:
    """``"multi_worker"``, ``"mirrored"`` or ``"default"`` for an environment and GPU count."""
    raw = env.get("TF_CONFIG", "").strip()
    if raw:
        try:
            tf_config = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"TF_CONFIG: not valid JSON: {exc}") from exc
        workers = tf_config.get("cluster", {}).get("worker", [])
        if len(workers) + len(tf_config.get("cluster", {}).get("chief", [])) > 1:
            return "multi_worker"
    if gpus > 1:
        return "mirrored"
    return "default"


def get_strategy(env: Mapping[str, str] | None = None):
    """The strategy :func:`strategy_kind` names for this process."""
    import tensorflow as tf

    kind = strategy_kind(
        os.environ if env is None else env, len(tf.config.list_physical_devices("GPU"))
    )
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def global_batch_size(per_replica: int, strategy) -> int:
    """The batch fed to ``fit``: the per-replica batch times the number of replicas."""
    return int(per_replica) * int(strategy.num_replicas_in_sync)
