"""What both processes share, the pipeline's and each step's: errors, paths, the names
written into MLflow, processes and signals, locks, and what a run prints."""
