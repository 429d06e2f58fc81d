"""Where a step's process starts: on this machine (forked from a prestarted template
interpreter, or by MLflow's local backend), as a Kubernetes Job, or a sweep's trials on Ray."""
