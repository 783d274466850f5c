"""Structured JSON logs; phone numbers are masked by default (personal data)."""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

# Runs of 7+ digits, optionally after + or 00: long enough to be a phone number, short codes stay.
PHONE = re.compile(r"(?<![\w-])(\+|00)?(\d{3})\d{4,}(\d{2})(?!\w)")


def mask_phones(text: str) -> str:
    return PHONE.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}****{m.group(3)}", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, mask: bool = True) -> None:
        super().__init__()
        self._mask = mask

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self._mask:
            message = mask_phones(message)
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        return orjson.dumps(entry).decode()


def setup(level: str = "INFO", mask: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(mask))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
