"""Reports: self-contained HTML pages, plots and model cards."""
