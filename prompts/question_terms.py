"""A chat question's words in the repository's own terms.

Users rarely type identifiers as the code spells them: "how does the session merge cookies?" asks about
`merge_cookies`, "explain the http adapter" about `HTTPAdapter`, "what does the cookie jar copy do?" about the `copy`
of `RequestsCookieJar`. The index knows names whole (`merge_cookies` is one term), so the question's words alone find
prose that mentions "merge" and "cookies", not the definition. Here:

- ``spelled_names``: the defined names a run of the question's words spells (its words joined, case and underscores
  aside, a plural's "s" either way);
- ``members_named``: a type's member named after it, dotted (`Client.send`, `sessions.Session`) or as words
  ("client send"): the chunks defining that member of that type, where the member's own name (`send`, defined by
  every transport) is shared among all its definers;
- ``prose_words``: the words of prose that name nothing ("what", "does", "the", "explain"), unless written as code;
- ``content_words``: the words of a question that say something (all but the stop words): how many it has weighs a
  file's stem said in its prose.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator

from .chunking import IDENTIFIER
from .members import declaring_chunks, members_of

MAX_RUN = 6   # words a spelled name may take ("build connection pool key attributes")
# Question words and function words: they name no code where written as prose, and as query terms they pull in
# whatever chunk says "what" or "explain" in a comment (rare words, so BM25 weighs them high).
STOP_WORDS = frozenset("""
    a about above after again all also am an and any are as at be been before being between both but by can could
    did do does doing done each explain explained few for from further give had has have having he her here how i if
    in into is it its itself just me more most my no nor not now of off on once only or other our out over overview
    please really same she should show so some such summarize summary tell than that the their them then there these
    they this those through to too under until up us very was we were what whats when where which while who whom why
    will with would you your
""".split())
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Za-z][a-z0-9]*|\d+")    # camelCase's parts: the words of `HTTPAdapter`
_JOINED_IN_A_NAME = re.compile(r"[ \t_-]*")                    # between a spelled name's words
_MEMBER_AFTER_TYPE = re.compile(r"\s+|\s*(?:\.|::|'s\s+)\s*")   # between a type's name and its member's


def fold(name: str) -> str:
    """A name as spelled words compare with it: `merge_cookies`, `mergeCookies` and "merge cookies" -> mergecookies."""
    return name.replace("_", "").lower()


def spelled_names(index, text: str) -> set[str]:
    """The names the repository defines that runs of two to MAX_RUN of ``text``'s words spell."""
    names = _folded_names(index)
    found = set()
    for run, span in _runs(text, 2):
        # (a name written as the code spells it is no spelling of another: `WSProtocol` is not `WS_PROTOCOLS`)
        if not (IDENTIFIER.fullmatch(text, *span) and text[slice(*span)] in index.definers):
            found.update(_spelled(names, run))
    return found


def members_named(index, text: str) -> dict[str, list[int]]:
    """"Type.member" -> the chunks defining that member of that type, for each type the repository declares (or
    module: a file's stem) that ``text`` names, by its name or in words, right before one of its members, so named
    or in words."""
    names = _folded_names(index)
    candidates = []     # (start, end, "Type.member", chunks): the type's words and its member's
    members_of_type: dict[str, dict[str, list[int]]] = {}
    for run, (start, end) in _runs(text, 1):
        gap = _MEMBER_AFTER_TYPE.match(text, end)
        # (a member is a defined name: words after that spell none make no member, and the type's members, all the
        # names a module defines, go unread; at Django most words are a type's or a module's name)
        after = [(member_run, last) for member_run, (_, last) in _runs(text, 1, start=gap.end(), first_only=True)
                 if _spelled(names, member_run)] if gap else []
        if not after:
            continue
        for owner in dict.fromkeys([*_spelled(names, run), *_stems(index, run)]):
            if owner not in members_of_type:
                members_of_type[owner] = _members(index, owner)
            members = members_of_type[owner]
            for member_run, last in after:
                for member, chunks in members.items():
                    if fold(member) in _variants(member_run):
                        candidates.append((start, last, f"{owner}.{member}", chunks))
    # The longest readings that do not overlap: "prepared request prepare auth" is PreparedRequest.prepare_auth, not
    # also PreparedRequest.prepare and Request.prepare.
    found: dict[str, list[int]] = {}
    taken: list[tuple[int, int]] = []
    for start, end, use, chunks in sorted(candidates, key=lambda c: c[0] - c[1]):
        if all(end <= first or start >= last for first, last in taken) or any(
                (start, end) == span for span in taken):        # (equal readings: a name two types share)
            found[use] = chunks
            taken.append((start, end))
    return found


def prose_words(written: Iterator[tuple[str, bool]]) -> set[str]:
    """Of a question's identifiers and whether each is written as code (chat._identifiers_as_written), the stop words
    written as prose only."""
    prose, code = set(), set()
    for name, as_code in written:
        (code if as_code else prose).add(name)
    return {name for name in prose - code if name.lower() in STOP_WORDS}


def content_words(text: str) -> list[str]:
    """The words of ``text`` but the stop words ("Perform side-effect actions on closing a cached file": Perform, side,
    effect, actions, closing, cached, file)."""
    return [word for word in _WORD.findall(text) if word.lower() not in STOP_WORDS]


def _members(index, owner: str) -> dict[str, list[int]]:
    """Member name -> its chunks, of the type ``owner`` (each one the repository declares), or of the module: the
    names a file of that stem defines."""
    heads = declaring_chunks(index, owner)
    members = members_of(index, owner, heads) if heads else {}
    for path in index.paths.by_stem.get(owner, ()):
        for number in index.chunk_numbers(path):
            for name in index.chunks[number].defines:
                members.setdefault(name, []).append(number)
    return members


def _runs(text: str, shortest: int, start: int = 0, first_only: bool = False
          ) -> Iterator[tuple[str, tuple[int, int]]]:
    """Runs of ``shortest`` to MAX_RUN words of ``text`` that a name may spell, folded, with where each is: words
    joined by spaces, hyphens or underscores, or none (camelCase). ``start``/``first_only``: only the runs that begin
    with the first word at or after ``start``."""
    words = list(_WORD.finditer(text, start))
    for first in range(len(words)):
        if first_only and (first > 0 or words[0].start() != start):
            return
        run = words[first].group().lower()
        for last in range(first + 1, min(first + MAX_RUN, len(words)) + 1):
            if last > first + 1:
                between = text[words[last - 2].end():words[last - 1].start()]
                if not _JOINED_IN_A_NAME.fullmatch(between):
                    break
                run += words[last - 1].group().lower()
            if last - first >= shortest:
                yield run, (words[first].start(), words[last - 1].end())


def _stems(index, run: str) -> list[str]:
    """The file stems (a module's name) that a folded run is."""
    return [run] if run in index.paths.by_stem else []


def _spelled(names: dict[str, list[str]], run: str) -> list[str]:
    return [name for variant in _variants(run) for name in names.get(variant, ())]


def _variants(run: str) -> tuple[str, ...]:
    """A folded run and its plural or singular: "merge cookie" finds `merge_cookies`, "parse headers" `parse_header`."""
    return (run, run[:-1], run + "s") if run.endswith("s") else (run, run + "s")


_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _folded_names(index) -> dict[str, list[str]]:
    """The repository's defined names by their folded spelling (``fold``), once per index."""
    if index not in _FOLDED:
        names: dict[str, list[str]] = {}
        for name in index.definers:
            if len(name) >= 3:
                names.setdefault(fold(name), []).append(name)
        _FOLDED[index] = names
    return _FOLDED[index]
