"""The HTTP data plane for function calls: ``Gateway`` (server), fed by a ``Backends`` seam.

Modules: ``server`` (lifecycle, routing of requests), ``downstream`` (client connections),
``proxy`` (one call and its failure table), ``upstream`` (instance connections and their pool),
``messages`` (HTTP heads), ``routing`` (``/function/NAME[.NS]``), ``backends`` (the Protocols the
runtime's instance pool satisfies). Service VIPs (the kube-proxy): ``vips`` (a listener per
cluster IP and port), ``splicing`` (TCP forwarding), ``datagrams`` (UDP), ``balancing`` (which
endpoint). Never imports ``api``, ``nameserver`` or the runtime.
"""
