"""The online service's request contract, free of any serving engine: parsing and validating /generate and
KServe v2 bodies, the JSON error (`RequestError`), and rendering the answer.

`gan_deploy.serve.deployment` runs this on Ray Serve; keeping the contract here means it is tested without Ray
and `import gan_deploy.serve.request` stays cheap.

Request (POST /generate, a JSON object). An image is identified by a pair (seed, index), exactly as in
`gan-deploy generate`: the image for (S, i) is byte-identical to file i (`{i:06d}.png`) of
`gan-deploy generate --seed S -n N` for any N > i. Four ways to name the pairs, one per request:

    {"seed": S, "start": i0, "count": n}  -> (S, i0) ... (S, i0+n-1)     seed and start default to 0
    {"seed": S, "indices": [i, j, ...]}   -> (S, i), (S, j), ...
    {"seeds": [s, t, ...]}                -> (s, 0), (t, 0), ...         one image per seed (StyleGAN style):
                                                                        image 0 of `generate --seed s`
    {"start_seed": s0, "count": n}        -> (s0, 0) ... (s0+n-1, 0)

plus an optional "format":
    "base64" (default): JSON {"images": [{"seed", "index", "png": <base64 of the PNG file's bytes>}], ...}
    "png":    the PNG file's bytes themselves (image/png); one image per request
    "array":  a .npy file of uint8 pixels [N, H, W, C] (np.load(..., allow_pickle=False) reads it)

A response is a pure function of (model sha256, the pairs, format): it carries an ETag derived from exactly
those, and Cache-Control that lets any cache keep it.

Every answer other than a 200 is JSON {"error": {"status", "reason", "field", "value", "expected", "message"}}
(`reason` is a fixed machine-readable word, see REASONS): 400 malformed request (not JSON, not an object,
NaN/Infinity/out-of-range floats, absurdly long numbers, nesting deeper than any request needs, unknown or
conflicting fields), 408 the body did not arrive in time, 413 too many images or too large a body, 422 a
field of the wrong type or out of range, 431 headers too large, 500 internal failure, 503 overloaded,
draining or not ready (with Retry-After), 504 the request took longer than the request timeout, 404/405
wrong route or method.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gan_deploy.core.images import encode
from gan_deploy.core.latents import MAX_SEED, latents_for

MAX_INDEX = MAX_SEED  # indices share the seed's range: latents_for hashes both as 64-bit words
RESPONSE_FORMATS = ("base64", "png", "array")
FIELDS = ("seed", "start", "count", "indices", "seeds", "start_seed", "format")
EXAMPLE = '{"seed": 0, "start": 0, "count": 4}'
MAX_JSON_DEPTH = 8  # a valid request nests 2 deep ({"seeds": [...]}); KServe v2 bodies 3
MAX_NUMBER_CHARS = 40  # the largest valid number (2**63-1) has 19 digits; a 5000-digit one is malformed
RETRY_AFTER_S = 1
CACHE_CONTROL = "public, max-age=31536000, immutable"

# every `reason` an error body can carry (the JSON error's fixed vocabulary; metrics count by it)
REASONS = (
    "bad_json", "bad_number", "too_deep", "not_object", "unknown_field", "conflicting_fields", "missing_field",
    "no_images", "wrong_type", "out_of_range", "too_many_images", "body_too_large", "headers_too_large",
    "body_timeout", "request_timeout", "overloaded", "draining", "not_ready", "not_found", "method_not_allowed",
    "backend_failed", "unavailable", "internal",
    # at the edge (serve/edge.py, serve/service.py): malformed HTTP or a missing Host, a header block that did not
    # arrive within --header-timeout, a connection past --max-connections, a body that is not JSON
    "bad_http", "header_timeout", "too_many_connections", "unsupported_media_type",
)


class RequestError(Exception):
    """A bad (or unanswerable) request: the HTTP status and what the JSON error body says about it."""

    def __init__(self, status: int, field: str | None, value: Any, expected: str, message: str, reason: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.field, self.value, self.expected, self.message = status, field, value, expected, message
        self.reason = reason or DEFAULT_REASONS.get(status, "internal")
        self.headers = dict(headers or {})
        if status in (503, 429) and "Retry-After" not in self.headers:
            self.headers["Retry-After"] = str(RETRY_AFTER_S)

    def body(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "reason": self.reason, "field": self.field, "value": _preview(self.value),
                          "expected": self.expected, "message": self.message}}

    def body_bytes(self) -> bytes:
        return json_bytes(self.body())


# the `reason` of an error raised without one, by HTTP status
DEFAULT_REASONS = {400: "bad_json", 404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large", 415: "unsupported_media_type",
                   422: "out_of_range", 431: "headers_too_large", 500: "internal", 503: "overloaded", 504: "request_timeout"}


def json_bytes(obj: Any) -> bytes:
    """Strict JSON (no NaN/Infinity, which are not JSON); anything unencodable becomes its repr, never an exception."""
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        return json.dumps(_jsonable(obj), allow_nan=False, separators=(",", ":")).encode()


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


@dataclass(frozen=True)
class ImageRequest:
    """What a valid request asks for: the (seed, index) pair of each image, in response order."""

    seeds: list[int]
    indices: list[int]
    fmt: str = "base64"

    def __len__(self) -> int:
        return len(self.indices)


def _preview(value: Any, limit: int = 80) -> Any:
    """The offending value as it goes into an error body: short, and always JSON-serializable."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:limit]).decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return str(value)[:limit]
    if isinstance(value, (list, dict, tuple)):
        text = json_bytes(value).decode()
        return _jsonable(value) if len(text) <= limit else text[:limit] + "..."
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)[:limit]


def _int(v: Any, label: str, lo: int, hi: int, what: str) -> int:
    # bool is a subclass of int in Python, but `true` is not a seed
    if not isinstance(v, int) or isinstance(v, bool):
        raise RequestError(422, label, v, f"an integer {what}", f"{label} must be an integer, got {type(v).__name__}", "wrong_type")
    if not lo <= v <= hi:
        raise RequestError(422, label, v, f"an integer {what}", f"{label} = {v} is out of range", "out_of_range")
    return v


def _too_many(name: str, value: Any, max_images: int) -> RequestError:
    return RequestError(413, name, value, f"at most {max_images} images per request",
                        "too many images in one request; split it into several requests", "too_many_images")


def _count(data: dict[str, Any], max_images: int) -> int:
    n = _int(data["count"], "count", 1, MAX_INDEX, ">= 1")
    if n > max_images:
        raise _too_many("count", n, max_images)
    return n


def _int_list(data: dict[str, Any], name: str, max_images: int, what: str) -> list[int]:
    v = data[name]
    if not isinstance(v, list):
        raise RequestError(422, name, v, f"a list of integers {what}", f"{name} must be a list", "wrong_type")
    if not v:
        raise RequestError(422, name, v, f"a non-empty list of integers {what}", f"{name} is empty", "out_of_range")
    if len(v) > max_images:  # checked before the elements, so a huge list costs nothing more
        raise _too_many(name, f"{len(v)} items", max_images)
    return [_int(x, f"{name}[{k}]", 0, MAX_SEED, what) for k, x in enumerate(v)]


# -- strict JSON ---------------------------------------------------------------------------------------

class _BadNumber(ValueError):
    def __init__(self, text: str, why: str):
        super().__init__(why)
        self.text, self.why = text, why


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:  # also keeps int() below Python's 4300-digit conversion limit
        raise _BadNumber(text, f"a number of {len(text)} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _BadNumber(text, f"a number of {len(text)} characters")
    v = float(text)
    if not math.isfinite(v):  # 1e400 overflows to inf: no JSON number means infinity
        raise _BadNumber(text, f"{text} is out of the range of a double")
    return v


def _parse_constant(text: str) -> Any:  # NaN, Infinity, -Infinity: Python's json accepts them, JSON does not
    raise _BadNumber(text, f"{text} is not a JSON number")


def _nesting_depth_exceeds(text: str, limit: int) -> bool:
    """Whether [ and { nest deeper than `limit` outside strings (checked before parsing, so a deep body costs
    one linear scan and no recursion)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def loads_strict(body: bytes | str, example: str = EXAMPLE) -> Any:
    """JSON text -> Python, refusing what is not JSON or could not be answered in JSON (RequestError 400):
    NaN/Infinity, numbers that overflow a double, numbers longer than any valid one, nesting past MAX_JSON_DEPTH."""
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
    except UnicodeDecodeError:
        raise RequestError(400, None, body, f"a JSON object such as {example}", "request body is not UTF-8 text", "bad_json") from None
    if _nesting_depth_exceeds(text, MAX_JSON_DEPTH):
        raise RequestError(400, None, text, f"JSON nested at most {MAX_JSON_DEPTH} deep", "request body is nested too deeply", "too_deep")
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except _BadNumber as e:
        raise RequestError(400, None, e.text, "finite JSON numbers of at most 40 characters", f"malformed number: {e.why}", "bad_number") from None
    except RecursionError:
        raise RequestError(400, None, text, f"JSON nested at most {MAX_JSON_DEPTH} deep", "request body is nested too deeply", "too_deep") from None
    except (json.JSONDecodeError, ValueError) as e:
        raise RequestError(400, None, text, f"a JSON object such as {example}",
                           f"request body is not valid JSON ({getattr(e, 'msg', type(e).__name__)})", "bad_json") from None


def parse_request(body: bytes | str, max_images: int) -> ImageRequest:
    """A request body -> the images it asks for; RequestError (with its HTTP status) when it is bad."""
    data = loads_strict(body)
    if not isinstance(data, dict):
        raise RequestError(400, None, data, f"a JSON object such as {EXAMPLE}", "request body must be a JSON object", "not_object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RequestError(400, unknown[0], data[unknown[0]] if _is_small(data[unknown[0]]) else "...",
                           f"only the fields {', '.join(FIELDS)}", f"unknown field {unknown[0]!r}", "unknown_field")
    fmt = data.get("format", "base64")
    if fmt not in RESPONSE_FORMATS:
        raise RequestError(422, "format", fmt, f"one of {', '.join(RESPONSE_FORMATS)}", "unknown response format", "out_of_range")
    keys = set(data) - {"format"}

    def conflict(mode: str, allowed: set[str]) -> None:
        extra = sorted(keys - allowed)
        if extra:
            raise RequestError(400, extra[0], data[extra[0]], f"with {mode!r} only the fields {', '.join(sorted(allowed | {'format'}))}",
                               f"field {extra[0]!r} cannot be combined with {mode!r}", "conflicting_fields")

    seed_what = f"0 <= seed <= {MAX_SEED}"
    if "seeds" in data:
        conflict("seeds", {"seeds"})
        seeds = _int_list(data, "seeds", max_images, seed_what)
        indices = [0] * len(seeds)
    elif "start_seed" in data:
        conflict("start_seed", {"start_seed", "count"})
        if "count" not in data:
            raise RequestError(400, "count", None, "an integer >= 1 with 'start_seed'", "missing field 'count'", "missing_field")
        s0 = _int(data["start_seed"], "start_seed", 0, MAX_SEED, seed_what)
        n = _count(data, max_images)
        if s0 + n - 1 > MAX_SEED:
            raise RequestError(422, "count", n, f"start_seed + count - 1 <= {MAX_SEED}", "seeds run past the largest seed", "out_of_range")
        seeds, indices = list(range(s0, s0 + n)), [0] * n
    elif "indices" in data:
        conflict("indices", {"indices", "seed"})
        seed = _int(data["seed"], "seed", 0, MAX_SEED, seed_what) if "seed" in data else 0
        indices = _int_list(data, "indices", max_images, f"0 <= index <= {MAX_INDEX}")
        seeds = [seed] * len(indices)
    elif "count" in data:
        conflict("count", {"seed", "start", "count"})
        seed = _int(data["seed"], "seed", 0, MAX_SEED, seed_what) if "seed" in data else 0
        i0 = _int(data["start"], "start", 0, MAX_INDEX, f"0 <= start <= {MAX_INDEX}") if "start" in data else 0
        n = _count(data, max_images)
        if i0 + n - 1 > MAX_INDEX:
            raise RequestError(422, "count", n, f"start + count - 1 <= {MAX_INDEX}", "indices run past the largest index", "out_of_range")
        seeds, indices = [seed] * n, list(range(i0, i0 + n))
    else:
        raise RequestError(400, None, data, f"one of 'count', 'indices', 'seeds' or 'start_seed', e.g. {EXAMPLE}",
                           "the request names no images", "no_images")
    if fmt == "png" and len(indices) != 1:
        raise RequestError(422, "format", fmt, "'png' with exactly one image; 'base64' or 'array' for several",
                           f"format 'png' returns one PNG file, but {len(indices)} images were asked for", "out_of_range")
    return ImageRequest(seeds, indices, fmt)


def _is_small(v: Any) -> bool:
    return isinstance(v, (int, float, bool, type(None))) or (isinstance(v, str) and len(v) <= 80)


# -- KServe v2 / Open Inference Protocol ----------------------------------------------------------------

V2_INT_TYPES = ("INT64", "INT32", "UINT64", "UINT32")


def parse_v2_infer(body: bytes | str, max_images: int) -> tuple[ImageRequest, str | None]:
    """An Open Inference Protocol (KServe v2) infer request -> the images and the request id.

    Inputs: "seed" (INT64 [N] or [N, 1]) and optionally "index" (same shape; default 0 for every seed, like
    {"seeds": [...]}). The output "image" is UINT8 [N, H, W, C], the same pixels as format "array"."""
    example = '{"inputs": [{"name": "seed", "shape": [2], "datatype": "INT64", "data": [7, 7]}, {"name": "index", ...}]}'
    data = loads_strict(body, example)
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
        raise RequestError(400, "inputs", data, example, "an infer request is an object with a list 'inputs'", "not_object")
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(422, "id", request_id, "a string", "'id' must be a string", "wrong_type")
    tensors: dict[str, list[int]] = {}
    for k, t in enumerate(data["inputs"]):
        label = f"inputs[{k}]"
        if not isinstance(t, dict) or t.get("name") not in ("seed", "index"):
            raise RequestError(400, label, t, "inputs named 'seed' and (optionally) 'index'", "unknown input", "unknown_field")
        name = t["name"]
        if name in tensors:
            raise RequestError(400, label, name, "each input once", f"input {name!r} given twice", "conflicting_fields")
        if t.get("datatype") not in V2_INT_TYPES:
            raise RequestError(422, f"{label}.datatype", t.get("datatype"), f"one of {', '.join(V2_INT_TYPES)}", "seeds and indices are integers", "wrong_type")
        values = t.get("data")
        if isinstance(values, list) and values and isinstance(values[0], list):  # row-major nested form [[s], [t]]
            values = [x for row in values for x in (row if isinstance(row, list) else [row])]
        if not isinstance(values, list) or not values:
            raise RequestError(422, f"{label}.data", values, "a non-empty list of integers", "'data' must be a non-empty list", "wrong_type")
        if len(values) > max_images:
            raise _too_many(f"{label}.data", f"{len(values)} items", max_images)
        shape = t.get("shape")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
                and shape in ([len(values)], [len(values), 1])):
            raise RequestError(422, f"{label}.shape", shape, f"[{len(values)}] or [{len(values)}, 1]", "shape does not match the data", "out_of_range")
        tensors[name] = [_int(x, f"{label}.data[{j}]", 0, MAX_SEED, f"0 <= {name} <= {MAX_SEED}") for j, x in enumerate(values)]
    if "seed" not in tensors:
        raise RequestError(400, "inputs", None, "an input named 'seed'", "missing input 'seed'", "missing_field")
    seeds = tensors["seed"]
    indices = tensors.get("index", [0] * len(seeds))
    if len(indices) != len(seeds):
        raise RequestError(422, "inputs", f"{len(seeds)} seeds, {len(indices)} indices", "as many indices as seeds",
                           "'seed' and 'index' differ in length", "out_of_range")
    return ImageRequest(seeds, indices, "v2"), request_id


# -- latents, pieces, responses -----------------------------------------------------------------------

def request_latents(req: ImageRequest, latent_dim: int) -> np.ndarray:
    """Latents [N, Z] float32 of the request's images, in order; row k depends only on (seeds[k], indices[k])."""
    seeds = np.asarray(req.seeds, dtype=np.int64)
    idx = np.asarray(req.indices, dtype=np.uint64)
    first = req.seeds[0]
    if all(s == first for s in req.seeds):
        return latents_for(first, idx, latent_dim)
    z = np.empty((len(req), latent_dim), dtype=np.float32)
    for s in np.unique(seeds):  # latents_for is vectorized over indices for one seed
        rows = np.flatnonzero(seeds == s)
        z[rows] = latents_for(int(s), idx[rows], latent_dim)
    return z


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) pieces of at most `size`: a request larger than a batch is batched in pieces."""
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def etag(model_sha256: str, req: ImageRequest) -> str:
    """A strong validator of the response: the response is a pure function of exactly these inputs."""
    h = hashlib.sha256(f"gan-deploy/1\0{model_sha256}\0{req.fmt}\0".encode())
    h.update(np.asarray(req.seeds, dtype=np.uint64).tobytes())
    h.update(np.asarray(req.indices, dtype=np.uint64).tobytes())
    return f'"{h.hexdigest()[:40]}"'


def render(req: ImageRequest, pixels: np.ndarray, model_name: str = "") -> tuple[bytes, str, dict[str, str]]:
    """uint8 pixels [N, H, W, C] -> (body, content type, extra headers) in the requested format.

    PNG bytes come from `images.encode`, the very function `generate` writes its files with."""
    if req.fmt == "png":
        headers = {"X-Gan-Seed": str(req.seeds[0]), "X-Gan-Index": str(req.indices[0])}
        return encode(pixels[0], "png"), "image/png", headers
    if req.fmt == "array":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(pixels), allow_pickle=False)
        return buf.getvalue(), "application/x-npy", {"X-Gan-Count": str(len(req))}
    if req.fmt == "v2":
        out = {"model_name": model_name, "outputs": [{"name": "image", "datatype": "UINT8", "shape": list(pixels.shape),
                                                       "data": pixels.reshape(-1).tolist()}]}
        return json_bytes(out), "application/json", {}
    images = [{"seed": s, "index": i, "png": base64.b64encode(encode(pixels[k], "png")).decode("ascii")}
              for k, (s, i) in enumerate(zip(req.seeds, req.indices))]
    body = {"format": "png", "count": len(images), "shape": list(pixels.shape[1:]), "images": images}
    return json.dumps(body).encode(), "application/json", {}


def header_bytes(headers: list[tuple[bytes, bytes]]) -> int:
    """Size of a request's header block as sent (name: value CRLF per header)."""
    return sum(len(k) + len(v) + 4 for k, v in headers)
