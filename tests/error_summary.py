"""A refused page as its reader meets it: the alert's message, the error summary under it (each
reason, a link to its input where the form has one) and each field's reason beside its input.

``read`` also checks what a screen-reader user relies on: every link of the summary points at an
element of the page, and an input refused for ``NAME`` is ``aria-invalid`` and described by its
reason (``e-NAME``), and that each link reads "LABEL : reason" (French) or "LABEL: reason"
(English), LABEL the page's ``<label for="f-NAME">`` (the reason alone where it has none; the
asterisk of a required field aside). It does not check that the summary shows no raw field key: a test names the
keys it refused, so ``assert_no_keys`` takes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser

_FIELDS = {"input", "select", "textarea", "fieldset"}


@dataclass
class _Alert:
    message: str = ""
    items: list[tuple[str | None, str]] = field(default_factory=list)  # (link target, text)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.alerts: list[_Alert] = []
        self.elements: dict[str, tuple[str, dict[str, str]]] = {}  # id → (tag, attributes)
        self.reasons: dict[str, str] = {}  # e-NAME's text, by NAME
        self.labels: dict[str, str] = {}  # <label for="f-NAME">'s text, by NAME
        self._label: str = ""
        self._in: str | None = None  # "message", "item" or "reason"
        self._href: str | None = None
        self._reason: str = ""
        self._alert_depth = 0  # the alert's <div> nesting while inside it
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.elements[a["id"]] = (tag, a)
        if self._alert_depth:
            if tag == "div":
                self._alert_depth += 1
            elif tag == "p" and not self.alerts[-1].message:
                self._start("message")
            elif tag == "li":
                self._start("item")
            elif tag == "a" and self._in == "item":
                self._href = a.get("href")
        elif (
            tag == "div"
            and a.get("class") == "alert error"
            and a.get("role") == "alert"
            and "hidden" not in a  # a script's own alert, empty until it fills it
        ):
            self.alerts.append(_Alert())
            self._alert_depth = 1
        elif tag == "label" and a.get("for", "").startswith("f-") and not self._in:
            self._label = a["for"].removeprefix("f-")
            self._start("label")
        elif tag == "span" and a.get("class") == "field-error":
            self._reason = a["id"].removeprefix("e-")
            self._start("reason")

    def handle_endtag(self, tag: str) -> None:
        if self._alert_depth and tag == "div":
            self._alert_depth -= 1
        text = "".join(self._text).strip()
        if self._in == "message" and tag == "p":
            self.alerts[-1].message = text
        elif self._in == "item" and tag == "li":
            self.alerts[-1].items.append((self._href, text))
            self._href = None
        elif self._in == "reason" and tag == "span":
            self.reasons[self._reason] = text
        elif self._in == "label" and tag == "label":
            self.labels[self._label] = " ".join(text.removesuffix("*").split())
        else:
            return
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text.append(data)

    def _start(self, what: str) -> None:
        self._in = what
        self._text = []


@dataclass(frozen=True)
class Refused:
    message: str  # the alert's own message
    linked: dict[str, str]  # the summary's links: the field's NAME (its input is f-NAME) → reason
    link_texts: dict[str, str]  # each link's whole text ("Date de fin : obligatoire"), by NAME
    unlinked: list[str]  # the summary's reasons that have no input on the page
    beside: dict[str, str]  # each reason shown beside its input, by NAME
    summary_text: str  # everything the summary's list shows, as text

    def assert_no_keys(self, keys: Iterable[str]) -> None:
        """No raw field key among what the summary shows (its links' targets aside). Only the
        keys no reader would type (``rx_1_dose``, ``diagnosis.code``) are looked for: ``reason``
        or ``diagnosis`` are words a reason may well use."""
        shown = [k for k in keys if ("_" in k or "." in k) and k in self.summary_text]
        assert shown == [], f"raw keys in the summary: {shown}: {self.summary_text}"


def read(page: str) -> Refused:
    parsed = _Page()
    parsed.feed(page)
    parsed.close()
    alerts = [a for a in parsed.alerts if a.message]  # a page's other alerts have no message
    assert len(alerts) == 1, page
    alert = alerts[0]
    linked: dict[str, str] = {}
    link_texts: dict[str, str] = {}
    unlinked: list[str] = []
    for href, text in alert.items:
        if href is None:
            unlinked.append(text)
            continue
        assert href.startswith("#f-"), href
        target = parsed.elements.get(href[1:])
        assert target is not None, f"the summary links to {href}, which is not on the page"
        tag, attributes = target
        name = href.removeprefix("#f-")
        assert tag in _FIELDS, (href, tag)
        assert attributes.get("aria-describedby") == f"e-{name}", (href, attributes)
        assert tag == "fieldset" or attributes.get("aria-invalid") == "true", (href, attributes)
        reason = parsed.reasons.get(name)
        label = parsed.labels.get(name)
        assert reason is not None, (href, text)
        expected = {f"{label} : {reason}", f"{label}: {reason}"} if label else {reason}
        assert text in expected, (href, text, expected)
        linked[name] = reason
        link_texts[name] = text
    return Refused(
        message=alert.message,
        linked=linked,
        link_texts=link_texts,
        unlinked=unlinked,
        beside=parsed.reasons,
        summary_text=" ".join(text for _, text in alert.items),
    )
