"""The dedup stage reads ingest's stored codes: it decodes no pretraining image."""

from __future__ import annotations

import PIL.Image
from conftest import FIXTURE, copy_run, make_cfg

from pipeline.dedup import run_dedup


def test_dedup_decodes_no_pretraining_image(ingested_fixture, tmp_path, monkeypatch):
    run = copy_run(ingested_fixture, tmp_path / "run", stages=("ingest",))
    opened = []
    real_open = PIL.Image.open

    def counting_open(fp, *a, **kw):
        opened.append(fp)
        return real_open(fp, *a, **kw)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    # no eval sets: every image the stage could open would be a pretraining image
    man = run_dedup(
        make_cfg(
            "data=fixture",
            f"data.cache={FIXTURE}",
            f"run_dir={run}",
            "dedup.progress=false",
            "dedup.workers=1",
            "data.eval_sets=[]",
        )
    )
    assert opened == []
    c = man["counts"]
    assert c["samples"] > 40 and c["exact"] >= 1 and c["near"] >= 6 and c["codes_images_per_second"] > 0
