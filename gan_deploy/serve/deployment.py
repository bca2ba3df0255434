"""The generator as a Ray Serve deployment: the scale-out path (replicas on a Ray cluster).

`GeneratorDeployment` (deployment name `GanGenerator`): each replica builds a `LocalGenerator` (runner
built and warmed once, the same batcher as the in-process path) and answers

* `pixels(seeds, indices)`: what the edge (`gan-deploy serve --ray`, `serve/edge.py`) calls through a
  `DeploymentHandle` (`serve.get_app_handle(app).pixels.remote(...)`, Ray's documented handle API); Ray's
  HTTP proxy is off then (`proxy_location="Disabled"`), so the edge owns every connection;
* `__call__(request)`: the whole HTTP contract (`service.GanService`), for when Ray Serve's own proxy is the
  listener (`serve deploy` of the config file `--write-config` writes, on a cluster without our edge).

`RayGenerator` is the edge's side of the handle. This module imports Ray at import time (its decorators);
`import gan_deploy` and `gan-deploy --help` never import it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from gan_deploy.serve.batcher import LocalGenerator
from gan_deploy.serve.config import ServeConfig
from gan_deploy.serve.config_file import GENERATOR, deployment_options
from gan_deploy.serve.service import GanService


@serve.deployment(name=GENERATOR)
class GeneratorDeployment:
    """One replica: a LocalGenerator, and the HTTP app around it for Ray's proxy."""

    def __init__(self, config: dict[str, Any]):
        """`config`: `ServeConfig.to_dict()`; the model file is loaded again here and must have its sha256."""
        cfg = self.cfg = ServeConfig.from_dict(config)
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (tests)
            replica = "local"
        self.service = GanService(cfg, None, replica=replica, capacity=cfg.max_queued)  # type: ignore[arg-type]
        self.gen = LocalGenerator(cfg, self.service.metrics)
        self.service.gen = self.gen

    async def pixels(self, seeds: list[int], indices: list[int]) -> np.ndarray:
        """uint8 [N, H, W, C] for the (seed, index) pairs (the edge's call through a DeploymentHandle)."""
        return await self.gen.pixels(seeds, indices)

    def info(self) -> dict[str, Any]:
        return {"backend": self.gen.backend_name, "describe": self.gen.describe(), "replica": self.service.replica}

    def metrics_snapshot(self) -> dict[str, Any]:
        return self.service.snapshot()

    async def __call__(self, request: Request) -> Response:
        """The HTTP contract when Ray's proxy is the listener: GanService on this replica's generator."""
        sent: dict[str, Any] = {"body": b""}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent["status"], sent["headers"] = message["status"], message.get("headers", [])
            else:
                sent["body"] += message.get("body", b"")
        await self.service(request.scope, request.receive, send)
        if "status" not in sent:  # the client went away: nothing to answer
            return Response(b"", status_code=499)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in sent["headers"] if k != b"content-length"}
        return Response(sent["body"], status_code=sent["status"], headers=headers)


class RayGenerator:
    """The edge's generator when the replicas run on Ray Serve: every call goes through a DeploymentHandle."""

    def __init__(self, app_name: str):
        self.handle = serve.get_app_handle(app_name)
        info = self.handle.info.remote().result(timeout_s=60)
        self._backend, self._describe = info["backend"], info["describe"]

    async def pixels(self, seeds: list[int], indices: list[int]) -> np.ndarray:
        return await self.handle.pixels.remote(seeds, indices)

    def describe(self) -> str:
        return f"{self._describe} on Ray Serve replicas"

    @property
    def backend_name(self) -> str:
        return self._backend


# -- the application ---------------------------------------------------------------------------------

def build_app(cfg: ServeConfig):
    """The Ray Serve application for `cfg` (not yet running)."""
    return _application(cfg.to_dict())


def app_builder(args: dict[str, Any]):
    """`import_path` of the config file (`config_file.IMPORT_PATH`) with args {"config": ServeConfig.to_dict()}.

    Builds from the plain data without loading the model: the task that builds the app may run on a node
    without the file; each replica loads it (and checks its sha256) in its constructor."""
    return _application(args["config"])


def _application(config: dict[str, Any]):
    from ray.serve.config import BackpressureConfig

    return GeneratorDeployment.options(**deployment_options(config)[GENERATOR], backpressure_config=BackpressureConfig(retry_after_s=1)).bind(
        config)
