"""Serving: the online HTTP service (our listener, batching in-process or on Ray Serve replicas), and the
Triton model repository.

Owns, one concept per module:
    request.py      the request contract (no Ray): /generate and KServe v2 bodies parsed and validated,
                    RequestError (the JSON error body), latents, ETag, rendering the answer
    metrics.py      counters and histograms, Prometheus text and JSON
    config.py       ServeConfig: the service's Artifact, limits, replicas and listener, checked on construction
    batcher.py      batching across requests in one process (Batcher) and the runner behind it (LocalGenerator)
    service.py      GanService: the HTTP application (ASGI): routes, limits, admission, health, drain state
    edge.py         the listener: uvicorn + llhttp with a header timeout, a connection cap, JSON for malformed
                    HTTP, the drain with a pre-stop period
    deployment.py   the Ray Serve replica (GeneratorDeployment), the edge's handle to it (RayGenerator), the app
    driver.py       the life cycle: generator (local or Ray), listener, signals, stop; run_service
    config_file.py  Ray Serve options and the config file for `serve deploy` / KubeRay
    triton.py       the Triton model repository

May import: core, artifacts, export, backends, precision (the service and the Triton repository run or export an
artifact; the gate re-run on the runtime). Never the CLI.
"""
