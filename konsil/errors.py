"""One error hierarchy for the whole server.

Domain code raises these; exactly one middleware renders them: as Matrix ``errcode`` JSON under
``/_matrix``, as RFC 9457 problem+json under ``/api`` and as a readable page elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self


class Reason(str):
    """An English message made from a fixed ``template`` and its ``params``.

    It *is* the English text (what problem+json, logs and English pages show), and it remembers
    how it was made, so that a page translates the template, not each value, and then fills in
    the same values (``konsil.i18n.Translator.gettext``). A template is written for
    ``str.format``: ``Reason("{code!r} is not an ICD-10 code", code="flu")`` reads
    ``'flu' is not an ICD-10 code``. A param may itself be a Reason (translated in turn).
    Domain code builds Reasons; only the web layer translates them.
    """

    template: str
    params: Mapping[str, str | int]

    def __new__(cls, template: str, /, **params: str | int) -> Self:
        self = super().__new__(cls, template.format(**params) if params else template)
        self.template = template
        self.params = params  # (a fresh dict: copies and pickles like the text)
        return self


class KonsilError(Exception):
    status: ClassVar[int] = 400
    errcode: ClassVar[str] = "M_UNKNOWN"
    title: ClassVar[str] = "Bad request"

    def __init__(
        self,
        message: str,
        *,
        errcode: str | None = None,
        fields: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.matrix_errcode = errcode or self.errcode
        self.fields = dict(fields or {})
        self.extra = dict(extra or {})

    def __str__(self) -> str:
        return self.message


class BadRequest(KonsilError):
    status = 400
    errcode = "M_BAD_JSON"
    title = "Bad request"


class ValidationError(BadRequest):
    """Input that is well-formed but wrong. ``fields`` maps a field name to what is wrong with it."""

    errcode = "M_INVALID_PARAM"
    title = "Invalid input"


class Unauthorized(KonsilError):
    status = 401
    errcode = "M_UNKNOWN_TOKEN"
    title = "Authentication required"


class Forbidden(KonsilError):
    status = 403
    errcode = "M_FORBIDDEN"
    title = "Forbidden"


class NotFound(KonsilError):
    status = 404
    errcode = "M_NOT_FOUND"
    title = "Not found"


class Conflict(KonsilError):
    status = 409
    errcode = "M_UNKNOWN"
    title = "Conflict"


class TooLarge(KonsilError):
    status = 413
    errcode = "M_TOO_LARGE"
    title = "Too large"


class RateLimited(KonsilError):
    status = 429
    errcode = "M_LIMIT_EXCEEDED"
    title = "Too many requests"

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message, extra={"retry_after_ms": retry_after_ms})
        self.retry_after_ms = retry_after_ms


class MethodNotAllowed(KonsilError):
    status = 405
    errcode = "M_UNRECOGNIZED"
    title = "Method not allowed"


class InternalError(KonsilError):
    """Only the error middleware raises this, for an exception nobody expected."""

    status = 500
    errcode = "M_UNKNOWN"
    title = "Internal error"


class Unavailable(KonsilError):
    status = 503
    errcode = "M_UNKNOWN"
    title = "Service unavailable"


class ConfigError(Exception):
    """Bad configuration: reported as one line at startup, never as a traceback."""
