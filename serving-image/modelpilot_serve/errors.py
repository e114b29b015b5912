"""The serving package's one exception vocabulary.

Where it sits: every layer below the HTTP app (settings aside) raises a
`ServeError` subclass when a request cannot be served; `app.py` maps them to
responses in a single handler, so status codes are decided here and nowhere
else. Anything that is *not* a `ServeError` reaching the app is a bug in the
server or the model and becomes a logged 500.
"""

from __future__ import annotations


class ServeError(Exception):
    """A request that cannot be served, with the HTTP status that says why."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class BadRequest(ServeError):
    """The request is malformed or does not match the model's signature."""

    status = 400


class NotFound(ServeError):
    """Unknown model name or version."""

    status = 404


class PayloadTooLarge(ServeError):
    """The body is larger than MODELPILOT_SERVE_MAX_REQUEST_BYTES."""

    status = 413


class UnsupportedMediaType(ServeError):
    """A content type the protocol does not speak."""

    status = 415


class Unprocessable(ServeError):
    """Well-formed input that the model itself refused to score (e.g. NaN into an estimator)."""

    status = 422


class NotReady(ServeError):
    """The model is still loading, or failed to load or to pass the validation gate."""

    status = 503


def shorten(message: str, limit: int = 2000) -> str:
    """Keep error messages bounded: MLflow embeds whole inputs in some of its messages.

    The middle goes, because both the beginning (what failed) and the end (why)
    carry the meaning.
    """
    if len(message) <= limit:
        return message
    head = limit // 3
    tail = limit - head - 5
    return f"{message[:head]} ... {message[-tail:]}"
