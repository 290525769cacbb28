"""Data sources, the embedded synthetic data, quality checks, Dataset and TFRecord formats."""
