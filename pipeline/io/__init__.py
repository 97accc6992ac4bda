"""Storage blocks: atomic writes, the shard format, stage manifests, quarantine, raw sources, withdrawn ids, checkpoints."""
