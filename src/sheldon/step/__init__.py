"""What a step's run.py uses: its settings and their parsers, its entry point, its tracked run
(MLflow and W&B together), its artifacts and the tracking store. Nothing here reaches the engine."""
