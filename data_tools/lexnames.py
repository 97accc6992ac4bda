"""The WordNet 3.0 ``lexnames`` file that NLTK's WordNetCorpusReader needs and Debian lacks.

45 lines ``NN<TAB>name<TAB>pos-number`` numbered 00-44, in WordNet's lexicographer
file order; pos numbers are noun 1, verb 2, adj 3, adv 4 (``adj.ppl`` is 3).
"""

from __future__ import annotations

LEXNAMES: tuple[str, ...] = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)

POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def render_lexnames() -> str:
    """The text of the ``lexnames`` file (45 lines, each ending in a newline)."""
    lines = []
    for i, name in enumerate(LEXNAMES):
        pos = POS_NUMBER[name.split(".", 1)[0]]
        lines.append(f"{i:02d}\t{name}\t{pos}\n")
    return "".join(lines)
