"""Running the service: the generator (in this process, or Ray Serve replicas on a local Ray or a cluster),
the listener at the edge (`serve/edge.py`: uvicorn with our limits), the drain on SIGTERM or Ctrl-C, and
everything this process started torn down again. `run_service(cfg)` is the whole life cycle (what
`gan-deploy serve` calls); `start_generator`, `deploy_many` and `stop` are its steps (the tests and the load
benchmark use them).

Only documented Ray APIs: `ray.init`, `serve.start(proxy_location="Disabled")` (Ray's HTTP proxy off: the edge
is the listener), `serve.run`, `serve.status`, `serve.get_app_handle`, `serve.delete`, `serve.shutdown`,
`ray.cluster_resources`. Ray is imported inside the functions: importing this module (and
`gan_deploy.run_service`) stays cheap and works without Ray.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from gan_deploy.core.errors import GanDeployError
from gan_deploy.serve.config import ServeConfig

_owns_ray = False  # this process started the local Ray (stop() shuts it down), rather than connecting to a cluster
_apps: list[str] = []  # apps this process deployed (stop() deletes them from a cluster it does not own)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Refuse an address already in use before starting anything."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise GanDeployError("cannot listen on this address", f"{host}:{port} ({e.strerror})", expected="a free port", hint="choose another --port, or stop what uses it") from None


def init_local_ray(**kwargs: Any) -> None:
    """`ray.init()` of a new local Ray whose processes (controller, replicas) import the gan_deploy this process
    runs (PYTHONPATH, inherited), without their logs in this terminal (`log_to_driver=False`: no "killed by
    ray.kill" lines at a clean stop)."""
    import ray

    import gan_deploy

    root = os.path.dirname(os.path.dirname(os.path.abspath(gan_deploy.__file__)))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if os.path.abspath(p) != root])
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("logging_level", logging.WARNING)
    kwargs.setdefault("log_to_driver", False)
    ray.init(**kwargs)
    globals()["_owns_ray"] = True


def local_resources(gpus: bool = True) -> dict[str, float]:
    """This machine's CPUs and (with `gpus`, when torch is installed) CUDA GPUs, honouring CUDA_VISIBLE_DEVICES."""
    found: dict[str, float] = {"CPU": float(os.cpu_count() or 1)}
    if not gpus:  # nothing asks for one: no torch import (seconds) to count them
        return found
    try:
        import torch
        found["GPU"] = float(torch.cuda.device_count())
    except Exception:  # no torch, or no CUDA: Ray's own count after ray.init has the last word
        pass
    return found


def check_resources(cfg: ServeConfig, total: dict[str, float] | None = None, where: str = "in the Ray cluster") -> None:
    """Refuse at once what this Ray cluster can never place (e.g. --num-gpus 1 on a machine without a GPU)."""
    if total is None:
        import ray
        total = ray.cluster_resources()
    for res, per in (("GPU", cfg.gpus), ("CPU", cfg.num_cpus)):
        if res not in total:
            continue
        need, have = per * cfg.num_replicas, float(total.get(res, 0.0))
        if need > have + 1e-9:
            flag = f"--num-{res.lower()}s"
            raise GanDeployError(f"not enough {res}s for the generator replicas",
                                 f"{need:g} needed ({flag} {per:g} x --replicas {cfg.num_replicas}), {have:g} {where}",
                                 expected=f"at most {have:g}",
                                 hint=f"lower {flag} or --replicas" + (" (--num-gpus 0 runs on the CPU)" if res == "GPU" else ""))


def deploy_many(apps: list[ServeConfig], logging_config: dict | None = None, timeout_s: float = 120.0) -> None:
    """Deploy apps (each under its app_name, without an HTTP route: the edge reaches them through handles) and
    wait until all run; a one-line GanDeployError if one fails or is not up within timeout_s (replicas that
    cannot be placed, a constructor that raises), with Ray's own explanation."""
    from ray import serve

    from gan_deploy.serve.deployment import build_app

    logging_config = logging_config or {"log_level": "WARNING", "enable_access_log": False}

    def run(cfg: ServeConfig) -> None:
        # serve.run (Ray's stable API) returns once the app runs, and may wait forever (replicas that cannot be
        # placed): it runs on a thread of its own while serve.status() below decides, within timeout_s
        try:
            serve.run(build_app(cfg), name=cfg.app_name, route_prefix=None, logging_config=logging_config)
        except Exception:  # reported below from serve.status(), in one line
            pass
    for cfg in apps:
        threading.Thread(target=run, args=(cfg,), name=f"gan-deploy-deploy-{cfg.app_name}", daemon=True).start()
    _apps.extend(cfg.app_name for cfg in apps)
    deadline = time.monotonic() + timeout_s
    pending = [cfg.app_name for cfg in apps]
    while pending:
        statuses = serve.status().applications
        for name in list(pending):
            app = statuses.get(name)
            status = str(getattr(app, "status", "")) if app is not None else ""
            if status.endswith("RUNNING"):
                pending.remove(name)
                continue
            failed = status.endswith(("DEPLOY_FAILED", "UNHEALTHY"))
            if failed or time.monotonic() > deadline:
                why = _status_message(app)
                for n in pending:
                    try:
                        serve.delete(n)
                    except Exception:
                        pass
                if not failed:
                    raise GanDeployError("the service did not start in time", f"{timeout_s:g} s ({why})",
                                         hint="raise --start-timeout, or check the replicas' resources (--num-cpus, --num-gpus)")
                raise GanDeployError("the service failed to start", why)
        if pending:
            time.sleep(0.2)


def _status_message(app: Any) -> str:
    if app is None:
        return "no status yet"
    parts = [str(getattr(app, "message", "") or "")]
    for dname, d in (getattr(app, "deployments", None) or {}).items():
        msg = str(getattr(d, "message", "") or "")
        if msg:
            parts.append(f"{dname}: {msg}")
    text = "\n".join(p for p in parts if p) or str(getattr(app, "status", ""))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if any("Traceback (most recent call last)" in ln for ln in lines):
        # a traceback ends with the exception itself: its last unindented line ("module.Type: message")
        exc = [ln.strip() for ln in lines if not ln.startswith((" ", "\t")) and "Traceback (most recent call last)" not in ln]
        if exc:
            return exc[-1][:400]
    return " ".join(ln.strip() for ln in lines)[:400]


def start_generator(cfg: ServeConfig) -> Any:
    """What answers /generate for cfg: a LocalGenerator in this process, or (cfg.uses_ray) the app deployed on
    Ray Serve (a local Ray, or cfg.ray_address / $RAY_ADDRESS) with Ray's HTTP proxy off, reached through a
    DeploymentHandle. `stop()` tears down what this started."""
    if not cfg.uses_ray:
        from gan_deploy.serve.batcher import LocalGenerator
        return LocalGenerator(cfg)
    import ray
    from ray import serve

    from gan_deploy.serve.deployment import RayGenerator

    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        else:
            init_local_ray()
            check_resources(cfg)  # a local Ray's resources are fixed (a cluster may scale up: the start timeout covers it)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's INFO lines in this process
    logging_config = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(proxy_location="Disabled", logging_config=logging_config)
    deploy_many([cfg], logging_config, cfg.start_timeout_s)
    return RayGenerator(cfg.app_name)


def wait_for_http(url: str, timeout_s: float = 30.0) -> None:
    """Until GET {url}/readyz answers 200."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(u.hostname or "", u.hostname or "127.0.0.1")
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, u.port or 80, timeout=5)
            conn.request("GET", f"{u.path}/readyz")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                return
            last = f"HTTP {resp.status}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.1)
    raise GanDeployError("the service does not answer over HTTP", f"{url}/readyz: {last}")


def stop() -> None:
    """Tear down what this process started on Ray: the local Ray it started (Serve, every app, Ray), or else only
    its apps on the cluster it connected to (other apps and Serve itself keep running); then disconnect."""
    import sys
    if "ray" not in sys.modules:  # never started: nothing to stop, and no Ray import (seconds) to find that out
        return
    import ray
    if not ray.is_initialized():
        _apps.clear()
        return
    from ray import serve
    try:
        if ray.is_initialized() and not _owns_ray:  # on a cluster: only our apps go, Serve and the others stay
            for name in _apps:
                serve.delete(name)
        # the local Ray we started goes whole with ray.shutdown() below: serve.shutdown() first killed the
        # controller under this process's own pending handle calls, which Ray then reported as two "(raylet) Task
        # ServeController... killed by ray.kill" lines at every clean stop; the edge has drained by now
    finally:
        _apps.clear()
        if ray.is_initialized():
            ray.shutdown()
        globals()["_owns_ray"] = False


def settle_locally(cfg: ServeConfig) -> ServeConfig:
    """The config as it runs on this machine: "auto" backend and device resolved (a one-line error for a backend
    that cannot take the artifact; nothing is loaded), resources checked, and the port checked free."""
    from gan_deploy.backends import make_runner
    from gan_deploy.precision.runtime_gate import REGATED_BACKENDS, require_runtime_gate

    runner = make_runner(cfg.backend, cfg.artifact, cfg.device)
    cfg = replace(cfg, backend=runner.name, device=runner.device)
    if runner.name in REGATED_BACKENDS and cfg.artifact.precision != "fp32":  # refused here in one line, not by every replica
        try:
            require_runtime_gate(runner)
        finally:
            runner.close()
    check_resources(cfg, local_resources(gpus=cfg.gpus > 0), "on this machine")
    check_port_free(cfg.host, cfg.port)
    return cfg


def run_service(cfg: ServeConfig, echo: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Run the HTTP service `cfg` describes until SIGTERM or Ctrl-C, then drain and stop: /readyz 503 for
    cfg.pre_stop_s while requests are still served, then the listener closes and what was accepted is answered
    (at most cfg.drain_timeout_s). Returns the drain's report, or None when stopped before the service was up.

    Without a Ray cluster to join it first settles the backend and device here (`settle_locally`), so a bad
    choice is a one-line error, not a traceback. `echo` gets the human status lines (`gan-deploy serve`
    prints them to stderr): starting, the URL, draining, stopped."""
    try:
        from gan_deploy.serve.edge import make_server
    except ImportError as e:
        raise GanDeployError("the HTTP server is not installed", f"{e.name}", hint='from the clone: pip install -e ".[serve]"') from None
    from gan_deploy.serve.service import GanService

    say = echo or (lambda _line: None)
    if not (cfg.ray_address or os.environ.get("RAY_ADDRESS")):
        cfg = settle_locally(cfg)
    else:
        check_port_free(cfg.host, cfg.port)
    if cfg.uses_ray:
        try:
            import gan_deploy.serve.deployment  # noqa: F401  (Ray Serve, before anything starts)
        except ImportError as e:
            raise GanDeployError("Ray Serve is not installed", f"{e.name}", hint='from the clone: pip install -e ".[serve]"') from None
    t0 = time.monotonic()

    def ready(url: str) -> None:
        where = f"{cfg.num_replicas} Ray Serve replica(s)" if cfg.uses_ray else "this process"
        say(f"serving {cfg.artifact.describe()} with {cfg.backend} on {cfg.device} ({where}) at {url} (started in {time.monotonic() - t0:.1f} s)")
        say(f"  try: curl -s {url}/generate -H 'Content-Type: application/json' -d '{{\"seed\": 0, \"start\": 0, \"count\": 4}}'   "
            f"(health: {url}/healthz, readiness: {url}/readyz, metrics: {url}/metrics); Ctrl-C drains and stops")

    def on_signal(name: str) -> None:
        say(f"{name}: draining: /readyz answers 503 now; the listener closes in {cfg.pre_stop_s:g} s, then requests "
            f"in flight get up to {cfg.drain_timeout_s:g} s ...")

    say("starting Ray Serve ..." if cfg.uses_ray else "starting ...")
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def _early(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # still starting (nothing in flight): stop now

    signal.signal(signal.SIGTERM, _early)
    signal.signal(signal.SIGINT, _early)
    report: dict[str, Any] | None = None
    try:
        try:
            generator = start_generator(cfg)
        except (KeyboardInterrupt, SystemExit):  # SystemExit: ray.init's SIGTERM handler, during start-up
            return None
        service = GanService(cfg, generator)
        server = make_server(service, cfg, ready, on_signal)
        server.run()  # takes SIGTERM/SIGINT itself while it runs (EdgeServer.handle_exit)
        report = server.drain_report
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # tearing down is not to be interrupted half-way
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        t1 = time.monotonic()
        try:
            stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if report is not None:
            report["shutdown_s"] = round(time.monotonic() - t1, 3)
    if report is None:
        say("stopped")
    elif report.get("in_flight_left"):
        say(f"stopped; {report['in_flight_left']} request(s) were still in flight after {cfg.drain_timeout_s:g} s")
    else:
        say(f"stopped: drained in {report['waited_s']:.1f} s after a pre-stop of {report['pre_stop_s']:.1f} s, shut down in {report['shutdown_s']:.1f} s")
    return report
