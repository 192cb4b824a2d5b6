"""The visible label of a rendered form's input, for the error summary's links."""

from __future__ import annotations

import html
import re

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def label_for(form_html: str | None, name: str) -> str | None:
    """The text of ``<label for="f-NAME">`` in ``form_html`` (the page's own, translated words,
    without the required-field asterisk), or None when the form labels no such input."""
    if not form_html:
        return None
    match = re.search(
        rf'<label\b[^>]*\bfor="f-{re.escape(name)}"[^>]*>(.*?)</label>', str(form_html), re.S
    )
    if match is None:
        return None
    text = _SPACE.sub(" ", html.unescape(_TAG.sub("", match.group(1)))).strip()
    return text.removesuffix("*").rstrip() or None
