"""Models: zoo, layers, fitting, precision, distribution, export, loading, inference, metrics."""
