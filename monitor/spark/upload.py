"""Posting sketch parts to calmon: retried while calmon is unreachable or busy, never twice counted.

calmon stores a part under its batch id in the transaction that answers 2xx; posting it again
answers 200 "duplicate" and writes nothing, so a retry after a lost response, or a whole re-run of
the job, is safe. A refusal (4xx) stops the upload with calmon's message: it names the field.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Literal

__all__ = ["UploadError", "Uploader"]

RETRIED = {429, 502, 503, 504}


class UploadError(RuntimeError):
    """calmon refused a part, or stayed unreachable through every retry."""


class Uploader:
    def __init__(
        self, url: str, token: str | None, timeout: float = 60.0, attempts: int = 5, backoff: float = 1.0
    ):
        self.endpoint = url.rstrip("/") + "/v1/sketches"
        self.token = token
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff

    def send(self, document: dict[str, Any]) -> Literal["accepted", "duplicate"]:
        body = json.dumps(document, allow_nan=False).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last = ""
        for attempt in range(self.attempts):
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (an operator's URL)
                    status: Literal["accepted", "duplicate"] = json.loads(response.read())["status"]
                    return status
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                if exc.code not in RETRIED:
                    raise UploadError(
                        f"calmon refused {document['batch_id']}: HTTP {exc.code} {detail}"
                    ) from None
                last = f"HTTP {exc.code} {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(self.backoff * 2**attempt)
        raise UploadError(f"{document['batch_id']} not accepted after {self.attempts} attempts: {last}")
