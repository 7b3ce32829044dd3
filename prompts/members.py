"""The members of a type named right before the cursor: ``Store::ne|``, ``Price.fr|``, ``pr.Price.|``.

A qualifier that is a class, struct, enum or interface (not a module) says the next name is one of that type's
members: its methods, associated functions, static members (and Java's fields). The type is the one the file's
imports bind to the name (or, for ``module.Type``, the one that module defines), else the file's own, else one
of a file it imports or sees (a Java class of its package). Its members are the names defined in its body, as the
index already records them (a chunk's ``defines`` lists a class's methods after the class), in the chunk that
names the type and in the chunks a long body was cut into after it (their first line indented, still inside
it); Rust adds its ``impl Type`` blocks anywhere in the repository, but for those in a file that defines another
type of the name, and Go its methods (``func (s *Type) Name(``) in the files of its package, its folder. Everything
is read from the chunks defining the type's name (and a Go package's chunks' first lines): a few chunks per
keystroke.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Container, Mapping, Sequence

from .imports import MAX_COMPLETION_NAMES

MAX_BODY_CHUNKS = 64  # chunks of one long type body followed after the chunk that names the type
_INDENTED = re.compile(r"^[ \t]+\S")
# A Go method's head, after its comments (a chunk's first lines): the receiver's name (group "receiver", if any) and
# its type's ("type"), `func (s *Server[T]) Run(`. The comments are matched once and never backtracked into (a
# lookahead's match taken by a backreference: an atomic group, which 3.10's re lacks), or a run of comments before
# no `func` would be retried every way its spaces split.
GO_RECEIVER = re.compile(r"(?=(?P<comments>(?:[ \t]*//[^\n]*\n|[ \t]*/\*(?s:.)*?\*/\s*)*))(?P=comments)"
                         r"func[ \t]*\([ \t]*(?:(?P<receiver>[A-Za-z_]\w*)[ \t]+)?\*?[ \t]*(?P<type>[A-Za-z_]\w*)")


def type_members(index, path: str, qualifier: str, imported: Mapping[str, Sequence[int]], seen: Container[str],
                 module_files: Sequence[str], partial: str, used: Container[str] = ()) -> dict[str, list[int]]:
    """The members of the type ``qualifier`` names that may come next, each with the chunks defining it: those
    beginning with ``partial`` (as typed, or failing that in any case); with nothing typed, those the file has
    ``used`` already, or failing that all of them. ``imported``: name bound by the file's imports -> chunks
    defining it; ``seen``: the files it imports or sees unimported (a Java file's package); ``module_files``: the
    files of the module a dotted qualifier begins with (``pr`` of ``pr.Price``). Empty where the qualifier names no
    type the repository defines."""
    name, heads = type_heads(index, path, qualifier, imported, seen, module_files)
    return likeliest_members(members_of(index, name, heads), partial, used) if heads else {}


def type_heads(index, path: str, qualifier: str, imported: Mapping[str, Sequence[int]], seen: Container[str],
               module_files: Sequence[str]) -> tuple[str, list[int]]:
    """The type a qualifier names, as seen from the file at ``path`` (the arguments as ``type_members`` takes them):
    its own name (an imported alias's original) and the chunks that declare it; none where the repository defines
    no type of the name."""
    name = re.split(r"\.|::", qualifier)[-1]
    if name == qualifier and name in imported:
        chunks = list(imported[name])  # (bound under another name, `import { Price as Money }`: the chunk's first)
        name = next((index.chunks[n].defines[0] for n in chunks if index.chunks[n].defines), name)
    elif name == qualifier:  # the file's own type, else one of a file it sees (a Java class of its package; a C++
        chunks = [n for n in index.chunk_numbers(path) if name in index.chunks[n].defines  # header's class, where
                  and _declares_type(index.chunks[n], name)] or [  # the file defines its constructor)
            n for n in index.definers.get(name, ()) if index.chunks[n].path in seen]
    else:
        inside = set(module_files)
        chunks = [n for n in index.definers.get(name, ()) if index.chunks[n].path in inside]
    return name, _declaring(index, name, chunks)


def declaring_chunks(index, name: str) -> list[int]:
    """The chunks anywhere in the repository that declare a type of the name (a chat question's `Client.send`)."""
    return _declaring(index, name, index.definers.get(name, ()))


def _declaring(index, name: str, chunks) -> list[int]:
    """Of ``chunks``, those that define the name as a type."""
    return [n for n in chunks if name in index.chunks[n].defines and _declares_type(index.chunks[n], name)]


def likeliest_members(members: Mapping[str, list[int]], partial: str, used: Container[str] = ()
                      ) -> dict[str, list[int]]:
    """Of ``members`` (name -> chunks), those that may come next: beginning with ``partial`` (as typed, or failing
    that in any case); with nothing typed, those ``used`` already, or failing that all of them."""
    if partial:
        found = {member: numbers for member, numbers in members.items() if member.startswith(partial)}
        if not found:
            folded = partial.casefold()
            found = {member: numbers for member, numbers in members.items() if member.casefold().startswith(folded)}
    else:
        found = {member: numbers for member, numbers in members.items() if member in used} or dict(members)
    return dict(list(found.items())[:MAX_COMPLETION_NAMES])


def members_of(index, name: str, heads: list[int], packages: dict | None = None) -> dict[str, list[int]]:
    """Member name -> chunks defining it, of the type ``name`` whose chunks declaring it are ``heads``.
    ``packages``: Go folder -> its methods as ``go_methods`` gives them, kept across calls by a caller that asks
    for several types of one package (a struct and the ones it embeds)."""
    bodies, methods = list(heads), []
    if index.chunks[heads[0]].language == "rust":
        own_files = {index.chunks[n].path for n in heads}
        others = {index.chunks[n].path for n in index.definers.get(name, ())
                  if index.chunks[n].path not in own_files and _declares_type(index.chunks[n], name, "rust-item")}
        bodies += [n for n in index.definers.get(name, ()) if index.chunks[n].path not in own_files | others
                   and _declares_type(index.chunks[n], name, "rust-impl")]
    elif index.chunks[heads[0]].language == "go":
        packages = {} if packages is None else packages
        for folder in dict.fromkeys(posixpath.dirname(index.chunks[n].path) for n in heads):
            if folder not in packages:
                packages[folder] = go_methods(index, folder)
            methods += packages[folder].get(name, [])
    members: dict[str, list[int]] = {}
    for head in dict.fromkeys(bodies):
        for number in _body(index, head):
            for member in index.chunks[number].defines:
                if member != name:
                    members.setdefault(member, []).append(number)
    for number in methods:  # (a method's chunk defines its name alone; the chunks a long one was cut into, none)
        for member in index.chunks[number].defines:
            members.setdefault(member, []).append(number)
    return members


def go_methods(index, folder: str) -> dict[str, list[int]]:
    """Go: type name -> the chunks of the methods declared on it in the package in ``folder`` (its ``.go`` files):
    the first lines of each of the package's chunks, read once for all its types."""
    methods: dict[str, list[int]] = {}
    for file in index.paths.folder(folder, True):
        if file.endswith(".go"):
            for number in index.chunk_numbers(file):
                method = GO_RECEIVER.match(index.chunks[number].text)
                if method:
                    methods.setdefault(method.group("type"), []).append(number)
    return methods


def _body(index, head: int) -> list[int]:
    """The chunk ``head`` and those after it in its file that continue the same body (their first line indented)."""
    last = index.chunk_numbers(index.chunks[head].path).stop
    numbers = [head]
    for number in range(head + 1, min(last, head + 1 + MAX_BODY_CHUNKS)):
        chunk = index.chunks[number]
        if chunk.kind != "definition" or not _INDENTED.match(chunk.text):
            break
        numbers.append(number)
    return numbers


_DECLARATIONS = {
    # a class, struct, enum, interface, record or trait of the name; Rust's `impl Type` and `impl Trait for Type`
    # (their type parameters' bounds may take arguments: `impl<T: Into<String>> Type<T>`)
    "any": r"\b(?:class|struct|enum|interface|record|trait|union|object"
           r"|impl(?:<(?:[^<>\n]|<[^<>\n]*>)*>)?(?:[^{{;\n]*\bfor)?)\s+{}\b",
    "rust-item": r"\b(?:struct|enum|union|type)\s+{}\b",
    "go-type": r"(?m)(?:\btype[ \t]+|^[ \t]+){}\b",  # (`type Server struct`, or one of a `type (...)` group)
    "rust-impl": r"\bimpl(?:<(?:[^<>\n]|<[^<>\n]*>)*>)?\s+(?:[^{{;\n]*\bfor\s+)?(?:[\w:]*::)?{}\b",
}


def _declares_type(chunk, name: str, kind: str | None = None) -> bool:
    """Whether a chunk's text declares a type of the name (or, ``rust-impl``, implements one); ``kind``, else the
    chunk's language's (``go-type``) or ``any``."""
    kind = kind or ("go-type" if chunk.language == "go" else "any")
    return re.search(_DECLARATIONS[kind].format(re.escape(name)), chunk.text) is not None
