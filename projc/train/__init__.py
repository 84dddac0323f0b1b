"""Training: the configuration, the Trainer (``projc.compile``), the update methods' driver, data,
batches, initialization, checkpoints, history and data parallelism."""
