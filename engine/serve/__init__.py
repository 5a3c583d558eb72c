"""``eac serve``: explanations per request over HTTP, with cross-request batching; on Ray Serve for many machines.

Layers, lowest first (the HTTP framework, uvicorn, prometheus-client and Ray are
imported only inside the functions that need them — the ``serve`` extra):

- :mod:`~eac.engine.serve.settings` — :class:`ServeSettings` and the safe-by-default checks;
- :mod:`~eac.engine.serve.batcher` — one batcher per classifier session: concurrent requests'
  masked evaluations in shared classifier batches, each request getting exactly its rows;
- :mod:`~eac.engine.serve.limits` — admission (a bounded queue) and the one-line errors;
- :mod:`~eac.engine.serve.params` — the request's form fields, checked;
- :mod:`~eac.engine.serve.metrics` — Prometheus metrics in a registry of the service's own;
- :mod:`~eac.engine.serve.results` — recent results (LRU, random ids) and the files served for them;
- :mod:`~eac.engine.serve.service` — :class:`Service`: the engine (:class:`~eac.engine.holder.EngineHolder`)
  and everything above, without HTTP;
- :mod:`~eac.engine.serve.app` — the ASGI application: routes, status codes, the web page (``static/``);
- :mod:`~eac.engine.serve.server` — uvicorn in this process (``eac serve``) or in a thread;
- :mod:`~eac.engine.serve.ray_serve` — the same application as a Ray Serve deployment (``eac serve --ray``).
"""
