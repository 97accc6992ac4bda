"""Blocks of the ingest stage (:mod:`pipeline.ingest`): the worker that turns one work unit of
raw samples into a shard (:mod:`pipeline.ingestion.worker`), and the merge of the units'
outputs into the stage's index, manifest and quarantine (:mod:`pipeline.ingestion.merge`).
The raw formats themselves are read by :mod:`pipeline.io.readers`."""
