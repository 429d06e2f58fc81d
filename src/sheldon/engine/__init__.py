"""The pipeline's process: plan the steps, run or reuse each one (cache keys, lineage), launch
it (locally, prestarted, on Kubernetes, on Ray) and sweep. Steps never import it."""
