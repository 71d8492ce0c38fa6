"""The service's refusals: an HTTP status and the key of a fixed message that clients may match on."""

from __future__ import annotations

from cooperllm.protocol import ERRORS


class ServiceError(Exception):
    """An API-level refusal: HTTP status and the key of a fixed message in ``protocol.ERRORS``."""

    def __init__(self, status: int, key: str, detail: str | None = None):
        super().__init__(detail or ERRORS[key])
        self.status = status
        self.key = key
        self.detail = detail or ERRORS[key]
