"""Running the service: a local Ray (or a cluster's), Serve's proxy, the app deployed and waited for, drained on
SIGTERM or Ctrl-C, and everything this process started torn down again. `run_service(cfg)` is the whole life
cycle (what `gan-deploy serve` calls); `start`, `deploy_many`, `drain` and `stop` are its steps (the tests and
the load benchmark use them to run several apps on one Ray).

Ray is imported inside the functions: importing this module (and `gan_deploy.run_service`) stays cheap and
works without Ray; `run_service` says so in one line when Ray Serve is missing.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from gan_deploy.core.errors import GanDeployError
from gan_deploy.serve.config import ServeConfig
from gan_deploy.serve.config_file import http_options

PROXY_CALLBACK = "gan_deploy.serve.proxy_hooks:middlewares"

_saved_env: dict[str, str | None] = {}
_owns_ray = False  # this process started the local Ray (stop() shuts it down), rather than connecting to a cluster
_apps: list[str] = []  # apps start() deployed (stop() deletes them from a cluster it does not own)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Refuse an address already in use before starting anything (Ray's proxy would only log the failure)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise GanDeployError("cannot listen on this address", f"{host}:{port} ({e.strerror})", expected="a free port", hint="choose another --port, or stop what uses it") from None


def local_ray_env(host: str) -> dict[str, str]:
    """Environment for a local Ray the service starts: Ray's proxy loads proxy_hooks (JSON for Ray's own error
    answers); with a loopback host, every Ray process binds loopback too (Ray's single-machine mode)."""
    import gan_deploy

    env = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": os.environ.get("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)}
    # Ray's processes (proxy, controller, replicas) import the gan_deploy this process runs, not whichever
    # one an installed distribution points at
    root = os.path.dirname(os.path.dirname(os.path.abspath(gan_deploy.__file__)))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if os.path.abspath(p) != root])
    if is_loopback(host):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def init_local_ray(host: str, **kwargs: Any) -> None:
    """`ray.init()` of a new local Ray with `local_ray_env(host)`; `stop()` restores the environment."""
    import ray

    env = local_ray_env(host)
    for k, v in env.items():
        _saved_env.setdefault(k, os.environ.get(k))
        os.environ[k] = v
    if env.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
        try:  # read once at import in this process; the processes Ray starts read it from the environment
            from ray._private import ray_constants
            ray_constants.ENABLE_RAY_CLUSTER = False
        except (ImportError, AttributeError):
            pass
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("logging_level", logging.WARNING)
    ray.init(**kwargs)
    globals()["_owns_ray"] = True


def local_resources() -> dict[str, float]:
    """What a new local Ray would find on this machine (Ray's own detection, without starting Ray): "GPU"
    (NVIDIA GPUs, honouring CUDA_VISIBLE_DEVICES) and "CPU"; a resource Ray's internals could not tell is left out."""
    found: dict[str, float] = {}
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource
        manager = get_accelerator_manager_for_resource("GPU")
        if manager is not None:
            n = manager.get_current_node_num_accelerators()
            visible = manager.get_current_process_visible_accelerator_ids()
            found["GPU"] = float(min(n, len(visible)) if visible is not None else n)
    except Exception:  # private API: only a shortcut; check_resources after ray.init has the last word
        pass
    try:
        from ray._private.utils import get_num_cpus
        found["CPU"] = float(get_num_cpus())
    except Exception:
        pass
    return found


def check_resources(cfg: ServeConfig, total: dict[str, float] | None = None, where: str = "in the Ray cluster") -> None:
    """Refuse at once what this Ray cluster can never place (e.g. --num-gpus 1 on a machine without a GPU)."""
    import ray

    total = ray.cluster_resources() if total is None else total
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


def deploy(cfg: ServeConfig, logging_config: dict | None = None) -> None:
    """Deploy the app (cfg.app_name at cfg.route_prefix) and wait until it runs (see deploy_many)."""
    deploy_many([cfg], logging_config, cfg.start_timeout_s)


def deploy_many(apps: list[ServeConfig], logging_config: dict | None = None, timeout_s: float = 120.0) -> None:
    """Deploy apps (each under its app_name at its route_prefix) at once and wait until all run; a one-line
    GanDeployError if one fails or is not up within timeout_s (replicas that cannot be placed, a constructor
    that raises), with Ray's own explanation."""
    from ray import serve

    from gan_deploy.serve.deployment import build_app

    logging_config = logging_config or {"log_level": "WARNING", "enable_access_log": False}
    serve.run_many([serve.RunTarget(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix, logging_config=logging_config)
                    for cfg in apps],
                   wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
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
                        serve.delete(n, _blocking=False)
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


def start(cfg: ServeConfig) -> str:
    """Start Ray (local, or connect to cfg.ray_address / $RAY_ADDRESS), Serve's proxy on cfg.host:cfg.port, and
    the app.

    Returns the app's base URL. Ray stays up for further apps (tests run two); `stop()` tears down what this
    process started: a local Ray entirely; on a cluster only the app."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        if not address:
            check_port_free(cfg.host, cfg.port)  # Ray's proxy would fail later, in a log nobody reads
            check_resources(cfg, local_resources(), "on this machine")  # seconds before Ray would have started
            init_local_ray(cfg.host)
            check_resources(cfg)  # a local Ray's resources are fixed (a cluster may scale up: the start timeout covers it)
        else:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    _apps.append(cfg.app_name)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's INFO lines in this process
    logging_config = {"log_level": "WARNING", "enable_access_log": cfg.access_log}
    serve.start(http_options=http_options(cfg), logging_config=logging_config)
    host, port = cfg.host, cfg.port
    try:  # Serve may already run on a cluster, with its own HTTP address: that is where the app is
        from ray.serve.context import _get_global_client
        running = _get_global_client().http_config
        host, port = running.host or host, running.port or port
    except Exception:
        pass
    deploy(cfg, logging_config)
    url = f"http://{host}:{port}{cfg.route_prefix.rstrip('/')}"
    wait_for_http(url, timeout_s=min(30.0, cfg.start_timeout_s))
    return url


def wait_for_http(url: str, timeout_s: float = 30.0) -> None:
    """Until GET {url}/readyz answers 200 through Ray's proxy: the proxy has the app's routes, a generator
    replica answers, and the proxy learnt the admission limits (proxy_hooks)."""
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
    raise GanDeployError("the service does not answer over HTTP", f"{url}/readyz: {last}", hint="see Ray's logs under /tmp/ray/session_latest/logs")


def drain(cfg: ServeConfig) -> dict[str, Any]:
    """Drain every replica of the app cfg.app_name: each stops admitting and waits (at most cfg.drain_timeout_s)
    for its in-flight requests. A handle reaches one replica per call, so calls go out until each replica has
    answered (a draining replica holds its call until it is empty, so concurrent calls spread over the replicas)."""
    from concurrent.futures import ThreadPoolExecutor as Pool

    from ray import serve

    handle = serve.get_app_handle(cfg.app_name)
    timeout_s, replicas = cfg.drain_timeout_s, cfg.num_replicas
    seen: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + timeout_s + 10  # finding every replica, after waiting for the slowest

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if len(seen) >= replicas:
                    return
            left = max(0.0, deadline - 10 - time.monotonic())
            r = handle.drain.remote(left).result(timeout_s=left + 15)
            with lock:
                seen[r["replica"]] = r

    with Pool(max_workers=replicas) as pool:
        for f in [pool.submit(worker) for _ in range(replicas)]:
            f.result()
    return {"replicas": len(seen), "in_flight_left": sum(r["in_flight_left"] for r in seen.values()),
            "waited_s": max((r["waited_s"] for r in seen.values()), default=0.0)}


def stop() -> None:
    """Tear down what this process started: the local Ray it started (Serve, every app, Ray), or else only its
    apps on the cluster it connected to (other apps and Serve itself keep running); then disconnect."""
    import ray
    from ray import serve
    try:
        if ray.is_initialized():  # serve.shutdown() would start a Ray just to find nothing
            if _owns_ray:
                serve.shutdown()
            else:
                for name in _apps:
                    serve.delete(name)
    finally:
        _apps.clear()
        if ray.is_initialized():
            ray.shutdown()
        globals()["_owns_ray"] = False
        for k, v in _saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _saved_env.clear()


def serve_forever(cfg: ServeConfig, ready: Callable[[str], None] | None = None,
                  on_signal: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Start (`start(cfg)`), run until SIGTERM or Ctrl-C, then drain: stop admitting, let in-flight requests
    finish (at most cfg.drain_timeout_s), shut Serve and Ray down. A second Ctrl-C stops at once. Returns the
    drain's report; None when stopped before the service was up. `ready(url)` once it answers,
    `on_signal(name)` when a signal starts the drain."""
    import signal

    stop_now = threading.Event()
    got: list[int] = []
    started = False

    def _on(signum: int, _frame: Any) -> None:
        got.append(signum)
        if not started or (len(got) > 1 and signum == signal.SIGINT):
            raise KeyboardInterrupt  # still starting (nothing in flight), or the second Ctrl-C: stop now
        stop_now.set()

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _on)
    signal.signal(signal.SIGINT, _on)
    try:
        url = start(cfg)
        # again: ray.init installed its own SIGTERM handler. From here `kill`, a container stop or Ctrl-C drain.
        signal.signal(signal.SIGTERM, _on)
        signal.signal(signal.SIGINT, _on)
        started = True
        if ready is not None:
            ready(url)
        while not stop_now.wait(3600):
            pass
        if on_signal is not None:
            on_signal(signal.Signals(got[0]).name)
        report = drain(cfg)
    except (KeyboardInterrupt, SystemExit):  # SystemExit: ray.init's SIGTERM handler, during start-up
        return None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # tearing down is not to be interrupted half-way
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        t0 = time.monotonic()
        try:
            stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    report["shutdown_s"] = round(time.monotonic() - t0, 3)
    return report


def settle_locally(cfg: ServeConfig) -> ServeConfig:
    """The config as it runs in a new local Ray: "auto" backend and device resolved on this machine (a one-line
    error for a backend that cannot take the artifact; nothing is loaded), and the port checked free."""
    from gan_deploy.backends import make_runner
    from gan_deploy.precision.runtime_gate import REGATED_BACKENDS, require_runtime_gate

    runner = make_runner(cfg.backend, cfg.artifact, cfg.device)
    cfg = replace(cfg, backend=runner.name, device=runner.device)
    if runner.name in REGATED_BACKENDS and cfg.artifact.precision != "fp32":  # refused here in one line, not by every replica
        try:
            require_runtime_gate(runner)
        finally:
            runner.close()
    check_port_free(cfg.host, cfg.port)
    return cfg


def run_service(cfg: ServeConfig, echo: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Run the HTTP service `cfg` describes until SIGTERM or Ctrl-C, then drain and stop (`serve_forever`);
    the drain's report, or None when stopped before the service was up.

    Without a Ray cluster to join (cfg.ray_address, $RAY_ADDRESS) it first settles the backend and device here
    (`settle_locally`), so a bad choice is a one-line error, not a Ray traceback. `echo` gets the human status
    lines (`gan-deploy serve` prints them to stderr): starting, the URL, draining, stopped."""
    say = echo or (lambda _line: None)
    if not (cfg.ray_address or os.environ.get("RAY_ADDRESS")):
        cfg = settle_locally(cfg)
    try:
        import gan_deploy.serve.deployment  # noqa: F401  (Ray Serve and starlette, before anything starts)
    except ImportError as e:
        raise GanDeployError("Ray Serve is not installed", f"{e.name}", hint='from the clone: pip install -e ".[serve]"') from None
    t0 = time.monotonic()

    def ready(url: str) -> None:
        say(f"serving {cfg.artifact.describe()} with {cfg.backend} on {cfg.device} at {url} (started in {time.monotonic() - t0:.1f} s)")
        say(f"  try: curl -s {url}/generate -d '{{\"seed\": 0, \"start\": 0, \"count\": 4}}'   "
            f"(health: {url}/healthz, readiness: {url}/readyz, metrics: {url}/metrics); Ctrl-C drains and stops")

    def on_signal(name: str) -> None:
        say(f"{name}: draining (in-flight requests get up to {cfg.drain_timeout_s:g} s) ...")

    say("starting Ray Serve ...")
    report = serve_forever(cfg, ready, on_signal)
    if report is None:
        say("stopped")
    elif report.get("in_flight_left"):
        say(f"stopped; {report['in_flight_left']} request(s) were still in flight after {cfg.drain_timeout_s:g} s")
    else:
        say(f"stopped: drained in {report['waited_s']:.1f} s, shut down in {report['shutdown_s']:.1f} s")
    return report
