"""Orchestration blocks of the main job (``pipeline.run``): stage keys, shared sweep stages, multi-task jobs, measurement."""
