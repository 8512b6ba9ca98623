"""The HTTP data plane for function calls: ``Gateway`` (server), fed by a ``Backends`` seam.

Modules: ``server`` (lifecycle, routing of requests), ``downstream`` (client connections),
``proxy`` (one call and its failure table), ``upstream`` (instance connections and their pool),
``messages`` (HTTP heads), ``routing`` (``/function/NAME[.NS]``), ``backends`` (the Protocols the
runtime's instance pool satisfies). Never imports ``api``, ``nameserver`` or the runtime.
"""
