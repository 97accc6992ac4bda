"""Measured comparisons of the pipeline's stages against the tools users would otherwise pick.

``python -m benchmarks [--quick] [--only NAME ...] [--run-dir runs/demo]`` (``make bench``)
runs every measurement below, each in its own Python process (so torch threads, forked
DataLoader workers and peak memory of one measurement never leak into the next), and
writes ``benchmarks/RESULTS.md`` and ``benchmarks/results.json``.

Every measurement runs ours and its anchor in the same process, on the same real images
(the demo corpus shards of ``<run-dir>/ingest/shards`` and the raw demo files under
``data/raw/``), interleaved rep by rep (ours, anchor, ours, anchor, ...) so that load from
other work on a shared machine hits both alike, and reports medians and their ratio.

| module | ours | anchor |
|---|---|---|
| :mod:`benchmarks.loader` | ShardStream + make_loader (2 workers, batch 64, 64 px) + normalize | (a) one-process PIL decode + augment loop x workers, (b) torchvision ImageFolder + DataLoader |
| :mod:`benchmarks.train_step` | ``pipeline.pretrain.run_pretrain`` (resnext_mini, the precision and layout pipeline.train.precision picks) | a bare PyTorch loop on synthetic tensors |
| :mod:`benchmarks.dedup_hash` | decode + ``pipeline.vision.near_index.perceptual_hash`` (one process; ingest pays the hash, dedup reads the codes) | imagededup ``PHash.encode_images`` (one worker) |
| :mod:`benchmarks.near_search` | ``build_index`` + ``range_pairs`` at N and 4N | imagededup ``find_duplicates`` at N and 4N |
| :mod:`benchmarks.dedup_scale` | the same search, one faiss index, on 2^16-2^20 synthetic codes (the stage: :mod:`benchmarks.dedup_stage`) | (reported) |
| :mod:`benchmarks.ingest` | the ingest stage, one worker | a tight decode / convert / re-encode loop |
| :mod:`benchmarks.canonicalize` | the vocab stage's hashtag mapper | (goal only) |
| :mod:`benchmarks.probe_solver` | the transfer probe's torch L-BFGS and minibatch Adam (pipeline.evaluation.probe_solver) on structured features of realistic shape | scikit-learn ``LogisticRegression`` (L-BFGS, one BLAS thread) |
| :mod:`benchmarks.demo` | ``make demo`` wall time | (goal only) |

``python -m benchmarks.project`` turns the measured throughputs into a projection for the
paper's setting (see that module). Benchmarks are not tests: nothing here asserts a time.
"""

MODULES = ("loader", "train_step", "dedup_hash", "near_search", "dedup_scale", "ingest", "canonicalize", "probe_solver", "demo")
