"""hemaflow's stage logic: plain, importable Python with no KFP import.

One module per stage (``ingest``, ``augment``, ``compare``, ``tune``, ``train``, ``ensemble``,
``evaluate``) plus the shared pieces they use. Heavy libraries (TensorFlow, Beam) are imported
inside functions so that importing this package, or compiling a pipeline, stays fast.
"""

__version__ = "0.1.0"
