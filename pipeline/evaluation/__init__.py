"""Evaluation blocks: metrics, linear probe, fine-tuning, transfer targets, feature-space decontamination, intervals,
and the transfer suite built from them (targets, suite_context, lr_selection, decontamination, suite, results,
correctness)."""
