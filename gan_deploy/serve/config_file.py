"""The service's Ray Serve options, and the config file that deploys it without `gan-deploy serve`.

`gan-deploy serve ... --write-config serve.yaml` writes a Ray Serve config with the same deployment, the
same limits and the same numbers `gan-deploy serve` itself runs with; deploy it with `serve deploy serve.yaml`
on a running Ray cluster, `serve run serve.yaml`, or paste it under `serveConfigV2` of a KubeRay RayService.
No Ray is needed to write it; when Ray is installed the file is checked against Ray's own `ServeDeploySchema`
before it is written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gan_deploy.core.errors import GanDeployError
from gan_deploy.serve.config import ServeConfig

GENERATOR = "GanGenerator"
IMPORT_PATH = "gan_deploy.serve.deployment:app_builder"


def deployment_options(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Ray Serve options of the deployment, from `ServeConfig.to_dict()` (what the config file carries: the app
    is built from it without loading the model)."""
    # Ray's own per-replica limits sit far above the service's (max_queued): a replica holds cheap coroutines
    # (slow clients, bodies being read, health probes, requests waiting for a batch) and decides admission
    # itself, at once; so nothing waits in Ray's router behind /generate, and Ray's router queue in front is
    # a last line (its 503 carries Retry-After).
    ongoing = max(1024, 4 * config["max_queued"] + 256)
    return {
        GENERATOR: {"num_replicas": config["num_replicas"], "max_ongoing_requests": ongoing, "max_queued_requests": ongoing,
                    "ray_actor_options": {"num_cpus": config["num_cpus"], "num_gpus": config["num_gpus"]},
                    # a model that does not load (wrong file, no device) will not load on a 20th try either
                    "max_constructor_retry_count": 3,
                    "graceful_shutdown_timeout_s": config["drain_timeout_s"], "graceful_shutdown_wait_loop_s": 0.5},
    }


def http_options(cfg: ServeConfig) -> dict[str, Any]:
    """Ray Serve's HTTP options: where its proxy listens."""
    # Ray's own end-to-end timeout is a backstop behind ours (which answers a JSON 504 first)
    return {"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s + 5, "keep_alive_timeout_s": cfg.keep_alive_s}


def serve_config(cfg: ServeConfig) -> dict[str, Any]:
    """A Ray Serve config equivalent to what `gan-deploy serve` starts."""
    config = cfg.to_dict()
    opts = deployment_options(config)
    opts[GENERATOR]["backpressure_config"] = {"status_code": 503, "retry_after_s": 1}
    return {
        "proxy_location": "EveryNode",
        "http_options": http_options(cfg),
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "applications": [{
            "name": cfg.app_name, "route_prefix": cfg.route_prefix, "import_path": IMPORT_PATH,
            "args": {"config": config},
            "deployments": [{"name": n, **o} for n, o in opts.items()],
        }],
    }


def check_with_ray_schema(config: dict[str, Any]) -> bool:
    """Validate with Ray's ServeDeploySchema when Ray Serve is installed; False when it is not."""
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        return False
    try:
        ServeDeploySchema.model_validate(config)
    except Exception as e:  # pydantic's ValidationError: the first problem on one line
        raise GanDeployError("the Ray Serve config does not validate", str(e).splitlines()[0][:300]) from None
    return True


def write_serve_config(path: str | Path, cfg: ServeConfig) -> str:
    """Write the config (YAML if PyYAML is installed, else JSON, which YAML readers also read); a summary line."""
    config = serve_config(cfg)
    checked = check_with_ray_schema(config)
    header = ("# Ray Serve config written by `gan-deploy serve --write-config` (same deployments and limits as\n"
              "# `gan-deploy serve`): `serve deploy <file>` on a running Ray cluster, or serveConfigV2 of a KubeRay\n"
              "# RayService. The model file must be at artifact_path on every node, with this sha256.\n")
    try:
        import yaml
        text = header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    except ImportError:
        text = json.dumps(config, indent=2) + "\n"
    from gan_deploy.core.fileio import atomic_write_text
    path = Path(path)
    from gan_deploy.artifacts.writes import Output, check_outputs
    check_outputs([Output("--write-config", path, "serve-config")], cfg.artifact.files())  # never the model served
    atomic_write_text(path, text)
    how = "checked against Ray's ServeDeploySchema" if checked else "not checked (Ray Serve is not installed)"
    return f"wrote Ray Serve config {path} ({how}); deploy it with: serve deploy {path}"
