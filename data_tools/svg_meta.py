"""Safe extraction of Dublin Core metadata (title, subject keywords) from SVG files.

Openclipart SVGs carry ``<metadata><rdf:RDF><cc:Work><dc:title>`` and
``<dc:subject><rdf:Bag><rdf:li>keyword</rdf:li>...``. Parsing uses defusedxml when it
is installed (no external entities, no entity expansion, no DTD fetching), otherwise
``xml.etree`` after the same pre-processing:

* A few Adobe Illustrator exports declare an internal DTD subset of plain string
  entities (``<!ENTITY ns_svg "http://www.w3.org/2000/svg">``). The DOCTYPE is removed
  and references to those simple entities (literal values without ``&``, ``%`` or
  ``<``) are substituted once, textually, so nothing can expand recursively; any
  other entity reference then fails the parse as undefined.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

try:  # pragma: no cover - exercised by whichever is installed
    from defusedxml.ElementTree import fromstring as _fromstring

    SAFE_PARSER = "defusedxml"
except ImportError:  # pragma: no cover
    from xml.etree.ElementTree import fromstring as _fromstring

    SAFE_PARSER = "xml.etree"

NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "cc": "http://web.resource.org/cc/",
    "cc_new": "http://creativecommons.org/ns#",
}
MAX_SVG_BYTES = 64 << 20  # refuse absurd files rather than parse them

_DOCTYPE_RE = re.compile(rb"<!DOCTYPE\s[^\[>]*(?:\[(?P<subset>.*?)\]\s*)?>", re.S)
_ENTITY_RE = re.compile(rb"""<!ENTITY\s+(?P<name>[A-Za-z_][\w.-]*)\s+(?P<q>["'])(?P<value>[^"'&%<]*)(?P=q)\s*>""")


@dataclass
class SvgMeta:
    """What :func:`parse_svg_meta` found: keywords in document order, title, and an error."""

    keywords: list[str] = field(default_factory=list)
    title: str | None = None
    error: str | None = None


def strip_doctype(data: bytes) -> tuple[bytes, int]:
    """Remove the DOCTYPE and inline its simple internal entities; return (bytes, n entities).

    Only entities whose value is a plain literal (no ``&``, ``%``, ``<``, quotes) are
    substituted, each reference exactly once, so the output grows at most linearly.
    """
    m = _DOCTYPE_RE.search(data)
    if m is None:
        return data, 0
    entities = {}
    if m.group("subset"):
        for e in _ENTITY_RE.finditer(m.group("subset")):
            entities[e.group("name")] = e.group("value")
    body = data[: m.start()] + data[m.end() :]
    if entities:
        pattern = re.compile(rb"&(" + b"|".join(re.escape(k) for k in entities) + rb");")
        body = pattern.sub(lambda x: entities[x.group(1)], body)
    return body, len(entities)


def _text(el) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def parse_svg_meta_bytes(data: bytes) -> SvgMeta:
    """Parse SVG bytes; never raises: a parse failure is reported in ``error``."""
    if len(data) > MAX_SVG_BYTES:
        return SvgMeta(error=f"svg larger than {MAX_SVG_BYTES} bytes")
    try:
        body, _n = strip_doctype(data)
        root = _fromstring(body)
    except Exception as exc:  # noqa: BLE001 - any parser error becomes svg_error
        return SvgMeta(error=f"{type(exc).__name__}: {exc}"[:300])
    meta = SvgMeta()
    seen: dict[str, None] = {}
    for subject in root.iter(f"{{{NS['dc']}}}subject"):
        for li in subject.iter(f"{{{NS['rdf']}}}li"):
            kw = _text(li)
            if kw and kw not in seen:
                seen[kw] = None
    meta.keywords = list(seen)
    # The work's own title is a direct child of cc:Work; dc:title elsewhere names agents.
    for ns in ("cc", "cc_new"):
        work = root.find(f".//{{{NS[ns]}}}Work")
        if work is not None:
            title = _text(work.find(f"{{{NS['dc']}}}title"))
            meta.title = title or None
            break
    return meta


def parse_svg_meta(path: str | Path) -> SvgMeta:
    """Parse one SVG file's keywords and title; never raises (see ``SvgMeta.error``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return SvgMeta(error=f"cannot read svg: {exc.strerror or exc}")
    return parse_svg_meta_bytes(data)
