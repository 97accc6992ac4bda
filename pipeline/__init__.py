"""Weakly-supervised hashtag pretraining pipeline.

Stages (one module each, each a thin Hydra entry point over plain functions):
``ingest`` -> ``dedup`` -> ``vocab`` -> ``pretrain`` -> ``transfer``, orchestrated by ``run``.
The design follows Mahajan et al. 2018, "Exploring the Limits of Weakly Supervised
Pretraining" (arXiv 1805.00932), and Goyal et al. 2017 for the large-batch recipe.
"""

__version__ = "0.1.0"
