"""Per-task resources from the profile: requests, limits, accelerators, node pools, retries.

One table says which ``config.resources`` section each task uses; :func:`apply` turns a
:class:`~hemaflow.config.TaskResources` into KFP task settings. Accelerator names differ by
backend: Vertex wants its machine enum (``NVIDIA_TESLA_T4``), Kubeflow the Kubernetes
resource name (``nvidia.com/gpu``) plus a node selector choosing the GPU model.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from hemaflow.config import Config, TaskResources
from hemaflow.errors import HemaflowError

#: The backends a pipeline is compiled for and submitted to.
Target = Literal["kubeflow", "vertex"]
TARGETS: tuple[str, ...] = get_args(Target)

#: Which resources section each task of the DAG draws from.
TASK_SECTION: dict[str, str] = {
    "configure": "data",
    "ingest": "data",
    "balance-and-augment": "data",
    "compare": "train",
    "select-top-k": "data",
    "tune": "train",
    "train": "train",
    "ensemble": "train",
    "evaluate": "evaluate",
}

#: Vertex accelerator enums start with a vendor prefix; on Kubernetes they all become one
#: extended resource, the model being chosen by the node selector.
_KUBERNETES_GPU = {"NVIDIA_": "nvidia.com/gpu", "TPU_": "google.com/tpu"}


def for_task(config: Config, task: str) -> TaskResources:
    if task not in TASK_SECTION:
        raise KeyError(f"{task}: no resources section for this task ({', '.join(TASK_SECTION)})")
    return getattr(config.resources, TASK_SECTION[task])


def accelerator_name(accelerator_type: str, target: Target) -> str:
    """The accelerator type as the backend names it."""
    if target == "vertex":
        return accelerator_type
    for prefix, resource in _KUBERNETES_GPU.items():
        if accelerator_type.upper().startswith(prefix):
            return resource
    return accelerator_type


def apply(task: Any, res: TaskResources, target: Target, caching: bool) -> Any:
    """Set requests/limits, accelerator, node pool, retries and caching on a KFP task."""
    if target not in TARGETS:
        raise HemaflowError(f"target: {target!r} is not one of {', '.join(TARGETS)}")
    task.set_cpu_request(res.cpu).set_memory_request(res.memory)
    task.set_cpu_limit(res.cpu_limit or res.cpu)
    task.set_memory_limit(res.memory_limit or res.memory)
    if res.accelerator_count:
        task.set_accelerator_type(accelerator_name(res.accelerator_type, target))
        task.set_accelerator_limit(res.accelerator_count)
    if res.retries:
        task.set_retry(
            num_retries=res.retries,
            backoff_duration=res.retry_backoff,
            backoff_factor=res.retry_backoff_factor,
            backoff_max_duration=res.retry_backoff_max,
        )
    if target == "kubeflow" and (res.node_selector or res.tolerations):
        from kfp import kubernetes

        for key, value in sorted(res.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in res.tolerations:
            kubernetes.add_toleration(
                task,
                key=tol.key,
                operator=tol.operator,
                value=tol.value or None,
                effect=tol.effect or None,
            )
    task.set_caching_options(enable_caching=caching)
    return task
