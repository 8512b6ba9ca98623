"""``funcmesh up``: run the daemon in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import os
import sys

import click


@click.command("up")
@click.option("--api-addr", metavar="HOST:PORT", help="API server address [127.0.0.1:6443].")
@click.option("--gateway-addr", metavar="HOST:PORT", help="Gateway address [127.0.0.1:8080].")
@click.option(
    "--gateway-tls-addr",
    metavar="HOST:PORT",
    help="Gateway TLS address for HTTP triggers with --tls-secret "
    "[127.0.0.1:8443, $FUNCMESH_GATEWAY_TLS_ADDR].",
)
@click.option(
    "--nats-url",
    metavar="URL",
    help="NATS server for NATS triggers, e.g. nats://127.0.0.1:4222 [$FUNCMESH_NATS_URL].",
)
@click.option(
    "--dns-addr",
    metavar="HOST:PORT",
    help="Cluster DNS server address, UDP and TCP [127.0.0.1:5353, $FUNCMESH_DNS_ADDR].",
)
@click.option(
    "--dns-upstream",
    metavar="IP[:PORT]",
    multiple=True,
    help="Where names outside cluster.local go (repeatable or comma list; 'none' refuses them) "
    "[$FUNCMESH_DNS_UPSTREAM, else the nameservers of /etc/resolv.conf].",
)
@click.option(
    "--otlp-endpoint",
    metavar="URL",
    help="Export the mesh's spans with OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318 "
    "(/v1/traces is added to a URL without a path) [$FUNCMESH_OTLP_ENDPOINT].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def up(
    api_addr: str | None,
    gateway_addr: str | None,
    gateway_tls_addr: str | None,
    nats_url: str | None,
    dns_addr: str | None,
    dns_upstream: tuple[str, ...],
    otlp_endpoint: str | None,
    verbose: bool,
) -> None:
    """Run the funcmesh daemon: API server, gateway, DNS server, controllers and runtimes."""
    from funcmesh import native

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    native.enable()  # before the data plane's modules are imported; logs which one runs

    from funcmesh.app import run
    from funcmesh.errors import FuncmeshError
    from funcmesh.settings import load_daemon_settings

    # Triggers call functions through httpx: one INFO line per call would flood the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = load_daemon_settings(
            os.environ,
            api_addr=api_addr,
            gateway_addr=gateway_addr,
            gateway_tls_addr=gateway_tls_addr,
            nats_url=nats_url,
            dns_addr=dns_addr,
            dns_upstream=dns_upstream,
            otlp_endpoint=otlp_endpoint,
        )
    except FuncmeshError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(run(settings, os.environ))
