"""hemaflow's Kubeflow Pipelines side: task wrappers, the DAG, runners and the CLI.

Installed as ``hemaflow.pipeline``. The stages live in :mod:`hemaflow.components`; nothing
here does a stage's work.
"""
