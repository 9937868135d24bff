"""Log lines for every iotenant service: JSON (one object per line) or plain text."""

from __future__ import annotations

import argparse
import json
import logging
import time

from iotenant.environment_flags import flag


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str = "info", log_format: str = "json") -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--log-level and --log-format, the same for every command."""
    flag(parser, "--log-level", "IOTENANT_LOG_LEVEL", "log level", default="info", choices=["debug", "info", "warning", "error"])
    flag(parser, "--log-format", "IOTENANT_LOG_FORMAT", "log format", default="json", choices=["json", "text"])
