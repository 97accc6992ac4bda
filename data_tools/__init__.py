"""Tools that fetch, unpack and convert the demo corpus sources.

The demo corpus stands in for Instagram: small, licensed image collections that ship
with hashtag-like labels (emoji names and keywords, clip-art keywords, stamp folders)
and can be installed through ordinary package clients (npm, apt, pip).

Entry points (run from the repo root; every path is relative to the working folder
or given as an argument):

* ``python -m data_tools.fetch_demo [--cache data/raw]`` -- download, unpack, verify
  and convert every source (see :mod:`data_tools.fetch_demo`).
* ``python -m data_tools.convert_<source> --cache data/raw`` -- one converter alone.
* ``python -m data_tools.to_img2dataset`` -- write img2dataset-style webdataset tars.
* ``python -m data_tools.inspect_shards FILE.tar ...`` -- print what tars hold.
* ``python -m data_tools.make_fixtures`` -- rebuild ``tests/fixtures/corpus``.

The converters' output, the "folder + index" format, is one JSONL file per source
(``converted/<source>.jsonl``, one object a line, sorted by ``id``)::

    {"id": str, "path": str (relative to the source root), "tags": [str, ...],
     "caption": str (optional), "meta": {...}}

and ``converted/sources.json`` saying where each source's root and index are.
"""
