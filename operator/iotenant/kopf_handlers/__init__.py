"""The operator's Kopf wiring: importing this package registers the handlers; ``configure`` gives them the process state."""

from iotenant.kopf_handlers import handlers
from iotenant.kopf_handlers.state import configure

__all__ = ["configure", "handlers"]
