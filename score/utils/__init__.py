"""Run infrastructure: configs, checkpoints, metrics, progress bars, workdir bookkeeping."""
