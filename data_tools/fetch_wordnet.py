"""Fetch WordNet 3.0 from Debian and lay it out the way NLTK expects.

* ``<cache>/wordnet_deb/``: ``dpkg -x`` of wordnet-base and wordnet-sense-index; its
  ``.complete.json`` is the marker of the ``wordnet`` source.
* ``<cache>/nltk_data/corpora/wordnet/``: copies of the files NLTK's
  ``WordNetCorpusReader`` opens (``data.*``, ``index.*``, ``*.exc``, ``index.sense``,
  ``cntlist.rev``) plus the ``lexnames`` file Debian lacks (:mod:`data_tools.lexnames`).

Using it: NLTK (>= 3.9) only opens files under its data path, so either set
``NLTK_DATA=<cache>/nltk_data`` or ``nltk.data.path.insert(0, "<cache>/nltk_data")``
before ``WordNetCorpusReader("<cache>/nltk_data/corpora/wordnet", None)``.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from .common import LOG, SourceError, check_count, read_marker, staged_dir, write_marker
from .fetch_deb import download_debs, extract_debs, forget_downloads
from .lexnames import render_lexnames

SOURCE = "wordnet"
DEB_DIR = "wordnet_deb"
NLTK_DIR = "nltk_data"
PACKAGES = {"wordnet-base": "1:3.0-37", "wordnet-sense-index": "1:3.0-37"}
WN_SUBDIR = "usr/share/wordnet"
POS_FILES = ("noun", "verb", "adj", "adv")
NLTK_FILES = (
    *(f"data.{p}" for p in POS_FILES),
    *(f"index.{p}" for p in POS_FILES),
    *(f"{p}.exc" for p in POS_FILES),
    "index.sense",
    "cntlist.rev",
)
EXPECTED_SYNSETS = {"noun": 82115, "verb": 13767, "adj": 18156, "adv": 3621}


def count_synsets(data_file: Path) -> int:
    """Number of synset lines in a WordNet ``data.<pos>`` file (license header skipped)."""
    with open(data_file, "rb") as fh:
        return sum(1 for line in fh if line[:1].isdigit())


def build_nltk_layout(wordnet_dir: Path, corpus_dir: Path) -> None:
    """Copy NLTK's WordNet files from ``wordnet_dir`` into ``corpus_dir`` and write ``lexnames``.

    Raises:
        FileNotFoundError: naming a file NLTK needs that the packages did not provide.
    """
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for name in NLTK_FILES:
        src = wordnet_dir / name
        if not src.is_file():
            raise FileNotFoundError(f"{name} missing from {WN_SUBDIR}")
        shutil.copyfile(src, corpus_dir / name)
    (corpus_dir / "lexnames").write_text(render_lexnames(), encoding="utf-8")


def verify_with_nltk(nltk_root: Path, source: str = SOURCE) -> dict:
    """Open the layout with NLTK's WordNetCorpusReader and check a synset and the noun count.

    Returns {} (and logs a warning) if nltk is not installed.

    Raises:
        SourceError: if NLTK cannot read the layout or the checks fail.
    """
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        LOG.warning("%s: nltk is not installed; skipping the NLTK reader check", source)
        return {}
    root = str(nltk_root.resolve())
    nltk.data.path.insert(0, root)  # NLTK >= 3.9 refuses paths outside its data path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available"
            wn = WordNetCorpusReader(str(Path(root) / "corpora" / "wordnet"), None)
            synset = wn.synset("brown_bear.n.01")
            nouns = sum(1 for _ in wn.all_synsets("n"))
    except Exception as exc:  # noqa: BLE001 - any reader failure is a failed check
        raise SourceError(source, f"NLTK's WordNetCorpusReader cannot read the layout: {exc!r}") from exc
    finally:
        if root in nltk.data.path:
            nltk.data.path.remove(root)
    check_count(source, "noun synsets through NLTK", EXPECTED_SYNSETS["noun"], nouns)
    if synset.lexname() != "noun.animal":
        raise SourceError(source, f"brown_bear.n.01 has lexname {synset.lexname()}, expected noun.animal")
    return {"nltk_noun_synsets": nouns, "nltk_version": nltk.__version__}


def fetch_wordnet(cache: Path, force: bool = False, keep_downloads: bool = False) -> dict:
    """Fetch, unpack, lay out for NLTK and verify WordNet 3.0; return the marker.

    Raises:
        SourceError: on a failed download, a missing file or a failed check.
    """
    deb_dest, nltk_dest = cache / DEB_DIR, cache / NLTK_DIR
    if not force and (marker := read_marker(deb_dest)) is not None and (nltk_dest / "corpora").is_dir():
        LOG.info("%s: already complete (%s), skipping", SOURCE, deb_dest)
        return marker
    debs = download_debs(cache, SOURCE, PACKAGES)
    with staged_dir(deb_dest) as tmp_deb:
        info = extract_debs(debs, tmp_deb, SOURCE)
        wn_dir = tmp_deb / WN_SUBDIR
        counts = {}
        for pos in POS_FILES:
            counts[f"{pos}_synsets"] = n = count_synsets(wn_dir / f"data.{pos}")
            check_count(SOURCE, f"{pos} synsets in data.{pos}", EXPECTED_SYNSETS[pos], n)
        with staged_dir(nltk_dest) as tmp_nltk:
            try:
                build_nltk_layout(wn_dir, tmp_nltk / "corpora" / "wordnet")
            except FileNotFoundError as exc:
                raise SourceError(SOURCE, str(exc)) from exc
            counts.update(verify_with_nltk(tmp_nltk))
        LOG.info("%s: verified %s", SOURCE, ", ".join(f"{k}={v}" for k, v in counts.items()))
        marker = write_marker(
            tmp_deb,
            SOURCE,
            packages=info,
            counts=counts,
            nltk_corpus=f"{NLTK_DIR}/corpora/wordnet",
            lexnames_lines=45,
        )
    if not keep_downloads:
        forget_downloads(debs)
    return marker
