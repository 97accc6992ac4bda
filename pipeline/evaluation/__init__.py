"""Evaluation blocks: metrics, linear probe, fine-tuning, transfer targets, feature-space decontamination, intervals."""
