"""Repository tier: no GPL- or AGPL-licensed distribution enters the lock.

The runtime is Apache-2.0. The GPL binds the whole program it is combined with, and the
AGPL also anyone who offers that program over a network, so neither may be a dependency.
The LGPL may (psycopg is LGPL-3.0): its copyleft covers the library itself, which we use
unmodified and which Python loads at run time, the "dynamic linking" the LGPL permits; a
user can swap in their own build of it. A package offering a choice that includes a
permissive licence ("MIT OR GPL-2.0") is taken under the permissive one.

Every package of `uv.lock` is looked up in this environment and judged by its installed
metadata: `License-Expression` (PEP 639, which supersedes the rest) when present, else the
`License` field and the `License ::` classifiers. A locked package this environment does
not install (platform markers, the virtual workspace root) is skipped with the reason; the
check as a whole fails when fewer than 80 % of the lock could be judged.
"""

from __future__ import annotations

import email
import importlib.metadata
import re
import tomllib
from email.message import Message
from pathlib import Path
from typing import Protocol

import pytest

LOCK = Path(__file__).resolve().parents[1] / "uv.lock"
MIN_CHECKED_SHARE = 0.8

GPL_ID = re.compile(r"A?GPL-")  # SPDX ids GPL-2.0-only, GPL-3.0-or-later, AGPL-3.0, ...
# Free text naming the GPL or AGPL; "LGPL", "Lesser" and "Library" never match.
GPL_TEXT = re.compile(r"\bA?GPL|\bGNU\s+(?:Affero\s+)?General\s+Public\s+License|\bAffero", re.I)
SPDX_TOKEN = re.compile(r"\(|\)|[^\s()]+")
# Classifiers that name no licence of their own.
GENERIC_CLASSIFIERS = frozenset({"License :: OSI Approved", "License :: DFSG approved"})


class Metadata(Protocol):
    def get(self, name: str, failobj: None = None) -> str | None: ...
    def get_all(self, name: str, failobj: None = None) -> list[str] | None: ...


def _spdx_offers_a_free_choice(expression: str) -> bool:
    """Whether an SPDX expression can be satisfied without any GPL or AGPL licence.

    OR is a choice (one free alternative suffices), AND a conjunction (every part must be
    free), WITH an exception on the licence before it (a GPL with an exception is still
    the GPL).
    """
    tokens = SPDX_TOKEN.findall(expression)
    pos = 0

    def peek() -> str:
        return tokens[pos].upper() if pos < len(tokens) else ""

    def choice() -> bool:
        nonlocal pos
        free = conjunction()
        while peek() == "OR":
            pos += 1
            free = conjunction() or free
        return free

    def conjunction() -> bool:
        nonlocal pos
        free = licence()
        while peek() == "AND":
            pos += 1
            free = licence() and free
        return free

    def licence() -> bool:
        nonlocal pos
        if peek() == "(":
            pos += 1
            free = choice()
            if peek() != ")":
                raise ValueError(f"unbalanced parentheses in {expression!r}")
            pos += 1
            return free
        if pos >= len(tokens):
            raise ValueError(f"{expression!r} ends where a licence should be")
        name = tokens[pos]
        pos += 1
        if peek() == "WITH":
            pos += 2
        return not GPL_ID.match(name)

    free = choice()
    if pos != len(tokens):
        raise ValueError(f"cannot read {expression!r} past {tokens[pos]!r}")
    return free


def _licence_title(text: str) -> str:
    """A `License` field's statement: the first line, which is the title of a pasted text."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def licence_statements(meta: Metadata) -> list[list[str]]:
    """The licence statements of a distribution, each as the alternatives it offers."""
    expression = meta.get("License-Expression")
    if expression:
        return [[expression]]
    statements = []
    if title := _licence_title(meta.get("License") or ""):
        # A choice is written with an upper-case OR; "GPL v2 or later" is one licence.
        statements.append(re.split(r"\s+OR\s+", title))
    classifiers = [
        c
        for c in meta.get_all("Classifier") or []
        if c.startswith("License ::") and c not in GENERIC_CLASSIFIERS
    ]
    if classifiers:
        statements.append(classifiers)
    return statements


def copyleft_licence(meta: Metadata) -> str | None:
    """The GPL or AGPL licence a distribution binds its users to, or None.

    With `License-Expression` that expression alone decides. Otherwise the `License` field
    and the classifiers are two statements of one licence; each must offer a way out of
    the GPL and AGPL, so that conflicting metadata is refused and read by a person.
    """
    expression = meta.get("License-Expression")
    if expression:
        return None if _spdx_offers_a_free_choice(expression) else expression
    for alternatives in licence_statements(meta):
        if all(GPL_TEXT.search(option) for option in alternatives):
            return " OR ".join(alternatives)
    return None


# --------------------------------------------------------------------- the classifier


def metadata(*fields: tuple[str, str]) -> Message:
    return email.message_from_string("".join(f"{name}: {value}\n" for name, value in fields))


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ([("License-Expression", "GPL-3.0-only")], "GPL-3.0-only"),
        ([("License-Expression", "AGPL-3.0-or-later")], "AGPL-3.0-or-later"),
        ([("License-Expression", "GPL-2.0-or-later WITH Classpath-exception-2.0")], "GPL"),
        ([("License-Expression", "MIT AND GPL-2.0-only")], "MIT AND GPL-2.0-only"),
        ([("License-Expression", "(MIT OR GPL-2.0) AND GPL-3.0-only")], "GPL-3.0-only"),
        (
            [("Classifier", "License :: OSI Approved :: GNU General Public License v3 (GPLv3)")],
            "GPLv3",
        ),
        (
            [("Classifier", "License :: OSI Approved :: GNU Affero General Public License v3")],
            "Affero",
        ),
        ([("License", "GPL v2 or later")], "GPL v2 or later"),
        ([("License", "GNU GENERAL PUBLIC LICENSE\n   Version 3, 29 June 2007")], "GNU GENERAL"),
        # two statements that disagree: refused, for a person to read
        (
            [("License", "GPL-2.0"), ("Classifier", "License :: OSI Approved :: MIT License")],
            "GPL-2.0",
        ),
    ],
)
def test_gpl_and_agpl_licences_are_refused(fields: list[tuple[str, str]], refused: str) -> None:
    found = copyleft_licence(metadata(*fields))
    assert found is not None
    assert refused in found


@pytest.mark.parametrize(
    "fields",
    [
        [("License-Expression", "LGPL-3.0-only")],
        [
            (
                "Classifier",
                "License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)",
            )
        ],
        [
            (
                "Classifier",
                "License :: OSI Approved :: GNU Library or Lesser General Public License (LGPL)",
            )
        ],
        [("License-Expression", "MIT")],
        [("License", "MIT"), ("Classifier", "License :: OSI Approved :: MIT License")],
        [("License-Expression", "MIT OR GPL-2.0")],
        [("License-Expression", "(GPL-3.0-only OR Apache-2.0) AND MIT")],
        [("License", "MIT OR GPL-2.0")],
        [
            ("Classifier", "License :: OSI Approved :: MIT License"),
            ("Classifier", "License :: OSI Approved :: GNU General Public License v2 (GPLv2)"),
        ],
        # a pasted MPL text names the GPL as a "Secondary License"; its title decides
        [("License", "Mozilla Public License Version 2.0\n\n... GNU General Public License ...")],
        # PEP 639: the expression supersedes the classifiers
        [
            ("License-Expression", "Apache-2.0"),
            ("Classifier", "License :: OSI Approved :: GNU General Public License (GPL)"),
        ],
    ],
)
def test_permissive_lgpl_and_dual_licences_are_allowed(fields: list[tuple[str, str]]) -> None:
    assert copyleft_licence(metadata(*fields)) is None


def test_a_distribution_without_licence_metadata_states_nothing() -> None:
    assert licence_statements(metadata(("Classifier", "License :: OSI Approved"))) == []


def test_a_malformed_expression_is_an_error_not_a_pass() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        copyleft_licence(metadata(("License-Expression", "(MIT OR GPL-2.0")))


# --------------------------------------------------------------------- the lock


def locked() -> list[tuple[str, list[str], bool]]:
    """(name, versions, virtual) of every package in uv.lock, one entry per name."""
    packages: dict[str, tuple[list[str], bool]] = {}
    for package in tomllib.loads(LOCK.read_text())["package"]:
        versions, virtual = packages.setdefault(package["name"], ([], False))
        if "version" in package:
            versions.append(package["version"])
        if "virtual" in package.get("source", {}):
            packages[package["name"]] = (versions, True)
    return [(name, versions, virtual) for name, (versions, virtual) in sorted(packages.items())]


LOCKED = locked()


def installed(name: str, versions: list[str], virtual: bool) -> Metadata | str:
    """The installed metadata of a locked package, or why there is none to judge."""
    if virtual:
        return "the virtual workspace root, never built or installed"
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed here (its markers exclude this platform or Python)"
    if dist.version not in versions:
        return f"installed {dist.version}, but the lock has {', '.join(versions)}"
    if not licence_statements(dist.metadata):
        return "declares no licence"
    return dist.metadata


JUDGED = [(n, v, w) for n, v, w in LOCKED if not isinstance(installed(n, v, w), str)]
UNJUDGED = [f"{n}: {why}" for n, v, w in LOCKED if isinstance(why := installed(n, v, w), str)]


@pytest.mark.parametrize(("name", "versions", "virtual"), JUDGED, ids=[n for n, _, _ in JUDGED])
def test_no_locked_distribution_is_gpl_or_agpl(
    name: str, versions: list[str], virtual: bool
) -> None:
    meta = installed(name, versions, virtual)
    assert not isinstance(meta, str), meta
    assert copyleft_licence(meta) is None, f"{name} is {copyleft_licence(meta)}"


def test_most_of_the_lock_was_judged() -> None:
    # Packages that cannot be judged here (the workspace root, platform-specific ones) are
    # named in the failure message; too many of them would leave the check above hollow.
    assert len(LOCKED) > 100  # the lock was read, not an empty file
    assert len(JUDGED) >= MIN_CHECKED_SHARE * len(LOCKED), "\n".join(UNJUDGED)
    assert len(JUDGED) + len(UNJUDGED) == len(LOCKED)
