"""``funcmesh trigger``: the Kubeless trigger commands, one subgroup per trigger kind.

Each kind lives in its own module (``trigger_nats``, ...) and is imported only when used.
"""

from __future__ import annotations

import click

from funcmesh.cli.lazy import LazyGroup
from funcmesh.cli.options import global_options

TRIGGER_COMMANDS = {
    "nats": "funcmesh.cli.trigger_nats:nats",
    "cronjob": "funcmesh.cli.trigger_cron:cronjob",
    "http": "funcmesh.cli.trigger_http:http",
}


@click.group(cls=LazyGroup, lazy_commands=TRIGGER_COMMANDS)
@global_options
def trigger() -> None:
    """Create, update, delete and list triggers (kubeless trigger ...)."""
