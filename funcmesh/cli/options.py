"""Options every command accepts, before or after the subcommand, and how commands read them.

``--kubeconfig``, ``--server``, ``--context``, ``-n/--namespace`` and ``-v/--verbose`` are put on
the root group and on every command; values land in one GlobalFlags object shared by the whole
context chain, so ``funcmesh -n x function ls`` and ``funcmesh function ls -n x`` mean the same
(the later one wins). This module must not talk to the API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_FLAGS_KEY = "funcmesh.flags"


class GlobalFlags:
    """The global options as given; None means "not given"."""

    __slots__ = ("context", "kubeconfig", "namespace", "server", "verbose")

    def __init__(self) -> None:
        self.kubeconfig: str | None = None
        self.server: str | None = None
        self.context: str | None = None
        self.namespace: str | None = None
        self.verbose = False


def global_flags(ctx: click.Context) -> GlobalFlags:
    flags = ctx.meta.get(_FLAGS_KEY)
    if not isinstance(flags, GlobalFlags):
        flags = ctx.meta[_FLAGS_KEY] = GlobalFlags()
    return flags


def _remember(attribute: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return
        setattr(global_flags(ctx), attribute, value)
        if attribute == "verbose":
            _log_verbosely()

    return callback


def _log_verbosely() -> None:
    logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    # funcmesh.client logs each request once; httpx and httpcore would repeat it.
    for noisy in ("httpx", "httpcore", "markdown_it"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_GLOBAL_OPTIONS = (
    click.option(
        "--kubeconfig",
        metavar="PATH",
        expose_value=False,
        callback=_remember("kubeconfig"),
        help="Kubeconfig file (default: $KUBECONFIG, else $FUNCMESH_HOME/kubeconfig).",
    ),
    click.option(
        "--server",
        metavar="URL",
        expose_value=False,
        callback=_remember("server"),
        help="API server URL, overriding the kubeconfig's.",
    ),
    click.option(
        "--context",
        metavar="NAME",
        expose_value=False,
        callback=_remember("context"),
        help="Kubeconfig context to use (default: its current-context).",
    ),
    click.option(
        "-n",
        "--namespace",
        metavar="NS",
        expose_value=False,
        callback=_remember("namespace"),
        help="Namespace (default: the context's namespace, else default).",
    ),
    click.option(
        "-v",
        "--verbose",
        is_flag=True,
        default=False,
        expose_value=False,
        callback=_remember("verbose"),
        help="Log requests and show tracebacks.",
    ),
)


def global_options(command: F) -> F:
    """Add the global options to a command or group."""
    for option in reversed(_GLOBAL_OPTIONS):
        command = option(command)
    return command


def output_option(*choices: str, default: str | None = None) -> Callable[[F], F]:
    """``-o/--output`` (Kubeless also spells it ``--out``) limited to ``choices``."""
    return click.option(
        "-o",
        "--output",
        "--out",
        "output",
        type=click.Choice(choices),
        default=default,
        help="Output format.",
    )
