"""hemaflow: train, tune, ensemble and stress-test blood cell classifiers as a KFP pipeline.

Layout of the package, imports flowing one way (top to bottom):

- ``hemaflow.pipeline``: the KFP side (tasks, DAG, compile, submit, schedule, runners, image)
  and the ``hemaflow`` command line;
- ``hemaflow.components``: one module per pipeline stage, each the stage's entry point;
- the library the stages share, by domain: ``data``, ``imaging``, ``modeling``,
  ``reporting``, ``storage``, and ``config`` with its profiles.

Heavy libraries (TensorFlow, Beam, KFP) are imported inside functions, so importing any of
this, or compiling a pipeline, stays fast.
"""

__version__ = "0.1.0"
