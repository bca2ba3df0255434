"""Serving: the online HTTP service on Ray Serve, and the Triton model repository.

Owns, one concept per module:
    request.py      the request contract (no Ray): /generate and KServe v2 bodies parsed and validated,
                    RequestError (the JSON error body), latents, ETag, rendering the answer
    metrics.py      a replica's counters and histograms, Prometheus text and JSON
    config.py       ServeConfig: the service's Artifact, limits, replicas and listener, checked on construction
    deployment.py   the Ray Serve replica (GeneratorDeployment) and the application (build_app, app_builder)
    driver.py       the life cycle: local Ray, resources, deploy, start, wait, drain, stop; run_service
    config_file.py  Ray Serve options and the config file for `serve deploy` / KubeRay
    proxy_hooks.py  ASGI middleware in Ray's proxy (admission, JSON for Ray's own answers)
    triton.py       the Triton model repository

May import: core, artifacts, export, backends, precision (the service and the Triton repository run or export an
artifact; the gate re-run on the runtime). Never the CLI.
"""
