"""The refusal messages a module can show on a page, read from its source (like xgettext does):
what the French catalogues must cover.

A message is a literal English text or template in one of these places:
``Reason("…", …)``, ``problems.add(name, "…", …)`` (``workflow.cda.values.Problems``),
``….raise_if_any("the …")`` (the document a refusal names), any ``konsil.errors`` refusal
(``ValidationError("…", fields={…: "…"})``, ``Conflict("…")``, ``Forbidden("…")``, ``NotFound``,
``TooLarge``…: a page shows them all) and ``errors[field] = "…"`` (``errors``, ``self.errors``,
``problems``). An f-string or a concatenation (``"…: " + x``, ``"…" % x``) in one of these
places cannot be translated once for every value: it is reported.
"""

from __future__ import annotations

import ast
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from konsil import errors as errors_module
from konsil.errors import KonsilError
from konsil.i18n import Translator

ROOT = Path(__file__).resolve().parent.parent
_ERROR_DICTS = {"errors", "problems"}
# the refusals of konsil.errors a page renders (its message, and ``fields`` for each field)
_REFUSALS = {
    name
    for name, value in vars(errors_module).items()
    if isinstance(value, type) and issubclass(value, KonsilError)
}


@dataclass
class Found:
    texts: set[str] = field(default_factory=set)
    fstrings: list[str] = field(default_factory=list)  # "path:line"


def placeholders(template: str) -> set[str]:
    """The names a ``str.format`` template fills in."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def _take(found: Found, path: Path, node: ast.expr | None) -> None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        found.texts.add(node.value)
    elif isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod) and _has_text(node)
    ):
        found.fstrings.append(_where(path, node))


def _has_text(node: ast.expr) -> bool:
    """A string literal (or f-string) somewhere in a ``+`` or ``%`` expression."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _has_text(node.left) or _has_text(node.right)
    return False


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def messages_in(*paths: Path) -> Found:
    found = Found()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                called = _name(node.func)
                args = node.args
                if called in ("Reason", "raise_if_any") or called in _REFUSALS:
                    if args:
                        _take(found, path, args[0])
                elif called == "add" and len(args) >= 2:
                    _take(found, path, args[1])
                if called in _REFUSALS:
                    for kw in node.keywords:
                        if kw.arg == "fields" and isinstance(kw.value, ast.Dict):
                            for value in kw.value.values:
                                _take(found, path, value)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Subscript) and _name(target.value) in _ERROR_DICTS:
                        _take(found, path, node.value)
    return found


def without_french(texts: Iterable[str], translator: Translator) -> list[str]:
    """The texts with no French, or whose French fills in a value the English does not name
    (it would show the English instead)."""
    return sorted(
        text
        for text in texts
        if translator.missing_fr([text])
        or not placeholders(translator.gettext("fr", text)) <= placeholders(text)
    )
