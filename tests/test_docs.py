"""The names the documentation gives exist.

* every ``pipeline.<module>[.<name>]`` and every ``pipeline/<path>.py`` written in the README, the pages
  under ``docs/``, the benchmarks, the config files and the package's own docstrings resolves (a moved or
  renamed block fails here, not in a reader's hands);
* every relative Markdown link ``[text](path)`` of the README and ``docs/`` points to an existing file;
* every ``make <target>`` written in a command of the README and ``docs/`` is a target of the Makefile;
* every config group option written as ``group=name`` or ``+group=name`` (``group`` a folder under
  ``conf/``) names an existing ``conf/<group>/<name>.yaml`` (options of Hydra's own ``hydra/...`` groups
  may also come from an installed plugin, e.g. ``hydra/launcher=submitit_local``).

Each check has a test that feeds it a bad name and asserts it is reported.
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"\bpipeline(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
SLASHED = re.compile(r"\bpipeline/[A-Za-z0-9_/]+\.py\b")
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)  # `x`, ``x `y` x``: CommonMark code spans
MAKE = re.compile(r"(?<![\w/.-])make((?:[ \t]+-\S+)*)((?:[ \t]+[A-Za-z0-9][A-Za-z0-9_.-]*(?![\w.=/-]))+)")
MAKE_TARGET_LINE = re.compile(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?!=)", re.M)
OPTION_NAME = re.compile(r"[a-z0-9_]+")  # a concrete option; placeholders (NAME, KIND, <kind>) are not checked


def _markdown() -> list[Path]:
    return [REPO / "README.md"] + sorted((REPO / "docs").rglob("*.md"))


def _documents() -> list[Path]:
    # benchmarks/RESULTS.md is left out: it is generated, and its profiles name the code as it was when measured
    return (
        _markdown()
        + sorted((REPO / "pipeline").rglob("*.py"))
        + sorted((REPO / "benchmarks").glob("*.py"))
        + sorted((REPO / "conf").rglob("*.yaml"))
    )


def _ids(p: Path) -> str:
    return str(p.relative_to(REPO))


# --- dotted names and file paths ------------------------------------------------------------------------


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module of the package, or an attribute (at any depth) of one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_resolver_rejects_what_does_not_exist():
    assert resolves("pipeline.io.run_folder.STAGES") and resolves("pipeline.train.loader")
    assert not resolves("pipeline.loader") and not resolves("pipeline.io.run_folder.NO_SUCH_NAME")


@pytest.mark.parametrize("doc", _documents(), ids=_ids)
def test_documented_names_exist(doc):
    text = doc.read_text(encoding="utf-8")
    missing = sorted({m for m in DOTTED.findall(text) if not resolves(m)})
    missing += sorted({m for m in SLASHED.findall(text) if not (REPO / m).exists()})
    assert not missing, f"{doc.relative_to(REPO)} names what does not exist: {missing}"


# --- relative links -----------------------------------------------------------------------------------


def broken_links(text: str, base: Path) -> list[str]:
    """The relative link targets of Markdown ``text`` (a file in folder ``base``) that name no existing file
    or folder. Web and mail links and in-page anchors (``#...``) are not checked; ``path#anchor`` is checked
    for ``path``. Links inside code (fenced blocks, inline spans) are not links."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    out = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s):, mailto:, ... and anchors
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path.startswith("/") or not (base / path).exists():
            out.append(target)
    return sorted(set(out))


def test_link_check_reports_a_missing_file(tmp_path):
    (tmp_path / "there.md").write_text("x", encoding="utf-8")
    text = (
        "[ok](there.md) [anchor](there.md#part) [web](https://example.org/x) [here](#top) "
        "![bad](figures/none.png) [gone](missing.md#part) [abs](/etc/passwd) `[code](not_checked.md)`\n"
        "```\n[fenced](not_checked_either.md)\n```\n"
    )
    assert broken_links(text, tmp_path) == ["/etc/passwd", "figures/none.png", "missing.md#part"]


@pytest.mark.parametrize("doc", _markdown(), ids=_ids)
def test_relative_links_resolve(doc):
    broken = broken_links(doc.read_text(encoding="utf-8"), doc.parent)
    assert not broken, f"{doc.relative_to(REPO)} links to files that do not exist: {broken}"


# --- make targets -------------------------------------------------------------------------------------


def makefile_targets(makefile: Path = REPO / "Makefile") -> set[str]:
    """The explicit targets of a Makefile: the names before ``:`` at the start of a rule line (not
    ``:=`` assignments, not special targets such as ``.PHONY``, not variable references like ``$(STAMP)``)."""
    names: set[str] = set()
    for match in MAKE_TARGET_LINE.finditer(makefile.read_text(encoding="utf-8")):
        names.update(n for n in match.group(1).split() if not n.startswith("."))
    return names


def _code(text: str) -> list[str]:
    """The commands of Markdown ``text``: fenced code blocks and inline code spans (prose such as "make sure"
    is not a command)."""
    fenced = [m.group(0) for m in FENCE.finditer(text)]
    return fenced + [m.group(2) for m in INLINE_CODE.finditer(FENCE.sub("", text))]


def make_targets_written(text: str) -> set[str]:
    """The targets of every ``make [flags] TARGET...`` written in a command of Markdown ``text``; variable
    assignments (``BENCH_ARGS=...``) end the list."""
    found: set[str] = set()
    for code in _code(text):
        for match in MAKE.finditer(code):
            found.update(match.group(2).split())
    return found


def unknown_make_targets(text: str, targets: set[str]) -> list[str]:
    return sorted(make_targets_written(text) - targets)


def test_make_check_reports_an_unknown_target():
    text = 'Run `make demo`, then `make no-such-target` or\n```bash\nmake bench BENCH_ARGS="--quick"  # x\nmake -j2 lint\n```\n'
    assert make_targets_written(text) == {"demo", "no-such-target", "bench", "lint"}
    assert unknown_make_targets(text, {"demo", "bench", "lint"}) == ["no-such-target"]
    assert "demo" in makefile_targets() and "install" in makefile_targets() and ".PHONY" not in makefile_targets()


@pytest.mark.parametrize("doc", _markdown(), ids=_ids)
def test_make_targets_exist(doc):
    unknown = unknown_make_targets(doc.read_text(encoding="utf-8"), makefile_targets())
    assert not unknown, f"{doc.relative_to(REPO)} names make targets the Makefile does not have: {unknown}"


# --- config group options -----------------------------------------------------------------------------


def config_groups(conf: Path = REPO / "conf") -> list[str]:
    """Every folder under ``conf/`` holding option files, as a Hydra group path (``transfer/target``)."""
    return sorted({p.parent.relative_to(conf).as_posix() for p in conf.rglob("*.yaml") if p.parent != conf})


@functools.cache
def _hydra_options(group: str) -> frozenset[str]:
    """The options Hydra itself knows for ``group`` (the conf folder, Hydra's own configs and installed plugins)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return frozenset(GlobalHydra.instance().config_loader().get_group_options(group))


def group_options_written(text: str, groups: list[str]) -> list[tuple[str, str]]:
    """``(group, option)`` for every ``group=option`` / ``+group=option`` in ``text``, lists and sweeps split
    (``group=[a,b]``, ``group=a,b``, ``group=a|b``); placeholders (``NAME``, ``<kind>``) are left out."""
    alternation = "|".join(re.escape(g) for g in sorted(groups, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w./-])\+?({alternation})=(\[[^\]\n]*\]|[A-Za-z0-9_<>,|\\-]+)")
    out = []
    for group, value in pattern.findall(text):
        for option in re.split(r"[,|\\\[\]\s]+", value):
            if OPTION_NAME.fullmatch(option):
                out.append((group, option))
    return out


def unknown_group_options(text: str, conf: Path = REPO / "conf") -> list[str]:
    missing = set()
    for group, option in group_options_written(text, config_groups(conf)):
        if (conf / group / f"{option}.yaml").is_file():
            continue
        if group.split("/")[0] == "hydra" and option in _hydra_options(group):
            continue
        missing.add(f"{group}={option}")
    return sorted(missing)


def test_group_check_reports_an_unknown_option():
    groups = config_groups()
    assert {"data", "experiment", "size", "transfer", "transfer/target", "vocab"} <= set(groups)
    text = (
        "`vocab=visual_nouns` `+transfer=imagenet1k` 'transfer/target=[fluent_emoji_subgroup,fashion_mnist]' "
        "`vocab=KIND` `experiment=<name>` `vocab.label_noise=0.1` `transfer.targets.imagenet1k.root=x` "
        "`vocab=imagenet1k\\|wordnet_nouns` `hydra/launcher=submitit_local` "
        "`vocab=no_such_vocab` `size=cpu_2core,huge` 'transfer/target=[fashion_mnist,no_such_target]'"
    )
    assert ("transfer/target", "fluent_emoji_subgroup") in group_options_written(text, groups)
    assert unknown_group_options(text) == ["size=huge", "transfer/target=no_such_target", "vocab=no_such_vocab"]


@pytest.mark.parametrize("doc", _markdown(), ids=_ids)
def test_config_group_options_exist(doc):
    unknown = unknown_group_options(doc.read_text(encoding="utf-8"))
    assert not unknown, f"{doc.relative_to(REPO)} names config options with no conf/<group>/<name>.yaml: {unknown}"
