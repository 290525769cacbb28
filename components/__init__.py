"""The pipeline stages, one module each: ingest, augment, compare, tune, train, ensemble,
evaluate, predict. Installed as ``hemaflow.components``; no KFP import here.
"""
