"""HTTP errors with the status they answer with; handlers turn them into `{"detail": message}` JSON."""

from __future__ import annotations


class ApiError(Exception):
    """An error a client caused or can act on; `status` is the HTTP status code."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}


class BadRequest(ApiError):
    """Malformed input: bad JSON, bad base64, not an image (400)."""

    status = 400


class Invalid(ApiError):
    """Well-formed input with a value out of range or inconsistent (422)."""

    status = 422


class NotFound(ApiError):
    """No such job, image or model (404)."""

    status = 404


class Conflict(ApiError):
    """The job is not in a state that allows this (409)."""

    status = 409


class TooMany(ApiError):
    """The queue is full (429)."""

    status = 429
