"""`Int8Policy`: what an INT8 model quantizes (calibration method, nodes kept out of INT8), and its validated reader.

A policy is what a mixed-precision search (`search.py`) finds and what `quantize --policy FILE` applies: the
`--json` report of an earlier `quantize --int8`, or a policy object on its own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.jsonio import field
from gan_deploy.precision.calibrate import CALIB_METHODS

KEEP_PRECISIONS = ("fp32",)  # what nodes kept out of INT8 run in (FP16 islands inside a Q/DQ model: not done)


@dataclass
class Int8Policy:
    """What an INT8 model quantizes, whatever the flavour: the calibration method and the nodes kept out of INT8.

    `exclude` names nodes of the graph the quantizer sees (after BatchNorm folding and the ConvTranspose rewrite,
    see `prepare_int8`): onnxruntime's quantizer (`nodes_to_exclude`) then leaves them in FP32 with FP32 weights, and
    puts no Q/DQ pair on their inputs or outputs for their sake (a tensor they share with a quantized node is still
    quantized for that node). The same policy gives the onnxruntime flavour and the TensorRT flavour, so a search run
    for one can be applied to the other (`quantize --policy`). `reasons` says why each node was kept.
    """

    calib_method: str = "minmax"  # CALIB_METHODS
    exclude: tuple[str, ...] = ()
    keep: str = "fp32"  # KEEP_PRECISIONS
    reasons: dict[str, str] = dc_field(default_factory=dict)
    source: str = "default"  # default | search | the file it was read from

    @property
    def mixed(self) -> bool:
        return bool(self.exclude)

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "calib_method": self.calib_method, "keep": self.keep, "exclude": list(self.exclude),
                "reasons": dict(self.reasons), "source": self.source}

    @classmethod
    def from_dict(cls, d: Any, where: str = "<policy>") -> "Int8Policy":
        if isinstance(d, dict) and "recipe" in d and isinstance(d["recipe"], dict) and "policy" in d["recipe"]:
            d = d["recipe"]["policy"]  # a `quantize --json` report: its model's policy
        if not isinstance(d, dict):
            raise GanDeployError("not an INT8 policy", where, expected='a JSON object {"calib_method": ..., "exclude": [node names]}',
                                 hint="use the JSON that `quantize --int8 --json FILE` wrote")
        what, hint = "INT8 policy", "use the JSON that `quantize --int8 --json FILE` wrote"
        # each field checked for type and choice, named with the file (core.jsonio.field: one line, never a TypeError)
        method = field(d, "calib_method", where, what, kind="str", expected=" or ".join(CALIB_METHODS), hint=hint,
                       required=False, default="minmax")
        if method not in CALIB_METHODS:  # not check_calib_method: a policy file's error names the file
            raise GanDeployError("INT8 policy has an unknown calibration method", f"{where}: {method!r}", expected=" or ".join(CALIB_METHODS))
        keep = field(d, "keep", where, what, kind="str", expected=" or ".join(KEEP_PRECISIONS), hint=hint, required=False, default="fp32")
        if keep not in KEEP_PRECISIONS:
            raise GanDeployError("INT8 policy keeps nodes in an unsupported precision", f"{where}: {keep!r}", expected=" or ".join(KEEP_PRECISIONS))
        exclude = field(d, "exclude", where, what, kind="list", check=lambda v: all(isinstance(n, str) for n in v),
                        expected="a list of node names (strings)", hint=hint, required=False, default=[])
        reasons = field(d, "reasons", where, what, kind="dict", check=lambda v: all(isinstance(r, str) for r in v.values()),
                        expected="an object {node name: reason}", hint=hint, required=False, default={})
        source = field(d, "source", where, what, kind="str", expected="a string", hint=hint, required=False, default=where)
        return cls(method, tuple(exclude), keep, dict(reasons), source)

    @classmethod
    def load(cls, path: str | Path) -> "Int8Policy":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise GanDeployError("policy file not found", str(p)) from None
        except (OSError, ValueError) as e:
            raise GanDeployError("cannot read the policy file", f"{p} ({type(e).__name__}: {str(e)[:120]})", expected="JSON") from None
        pol = cls.from_dict(d, str(p))
        pol.source = str(p)
        return pol
