"""Structured logs: one JSON object per line, an access record per request with its request id, and user ids
only ever as keyed hashes (a log line must not identify a user; the key makes the hash useless without it).

The access record replaces uvicorn's access log (run uvicorn with `--no-access-log`), which prints raw paths
such as `/v1/users/<id>`; this one names the route template instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

ACCESS = logging.getLogger("reco.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-ID when it is a plain token of at most 64 characters, else a new one."""
    return header if header and _REQUEST_ID.match(header) else uuid.uuid4().hex


class UserHasher:
    """Keyed BLAKE2b of user ids for logs: stable within a deployment that sets `key`, unlinkable without it."""

    def __init__(self, key: str | None) -> None:
        self._key = (key or secrets.token_hex(16)).encode()[:64]

    def __call__(self, user_id: str) -> str:
        return hashlib.blake2b(user_id.encode(), key=self._key, digest_size=8).hexdigest()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(fmt: str, level: str) -> None:
    """Root handler on stderr: `json` (one object per line) or `text`; uvicorn's loggers go through it too."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._reco = True  # type: ignore[attr-defined]  # ours: replaced by the next call, others kept
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_reco", False)] + [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it narrates its AVX-variant probing at INFO
