"""hemaflow's Kubeflow Pipelines side: component wrappers, the DAG, runners and the CLI.

The stage logic lives in :mod:`components`; nothing here does a stage's work.
"""
