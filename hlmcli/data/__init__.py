"""From a model and an archive (or a stream of records) to the design the engine fits."""
