"""The Kubernetes-style HTTP API: discovery, CRUD, watch, Status errors, logs, the service proxy.

Entry points: ``server.ApiServer`` (serves it), ``providers.ApiProviders`` (what it needs from
the runtime), ``pki.ensure_pki`` and ``pki.ensure_kubeconfig`` (its credentials on disk). The web
framework (aiohttp) is used only inside this package.
"""
