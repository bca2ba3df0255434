"""`QuantizeOptions`: everything `gan-deploy quantize` decides, as one object that checks itself when it is made.

The library's constants are the choices (precisions, INT8 targets, calibration methods, FP16 evaluators), so the
CLI builds one of these and repeats none of the checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gan_deploy.core.errors import GanDeployError, check_at_most
from gan_deploy.precision.calibrate import CALIB_SEED, DEFAULT_CALIB_SAMPLES, check_calib_method, check_calib_samples
from gan_deploy.precision.gate import DEFAULT_GATE_SAMPLES, GateThresholds
from gan_deploy.precision.int8 import check_int8_target
from gan_deploy.precision.policy import Int8Policy

QUANTIZE_PRECISIONS = ("int8", "fp16")
# the most latents calibration, the gate or the sensitivity analysis may take: every one is a forward pass of the
# FP32 model (and of each candidate model for the gate: the mixed search runs it dozens of times), and the gate keeps
# the FP32 images of all of them. The shipped model runs about 20,000 images/s on 2 cores: 1,000,000 latents is
# already ~1-2 minutes per pass, hours for a search, and 1,000x the defaults (512, 1,000, 64), whose figures are
# stable to well under the gate's margins; the memory they take is checked against the machine when the model is known.
MAX_QUANTIZE_SAMPLES = 1_000_000
FP16_EVALUATORS = ("auto", "onnxruntime", "reference")


def _one_of(what: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise GanDeployError(what, repr(value), expected=f"one of {', '.join(choices)}")


def _int_at_least(what: str, value: Any, low: int, none_ok: bool = False) -> None:
    if none_ok and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise GanDeployError(what, repr(value), expected=f"an integer >= {low}" + (" or None" if none_ok else ""))


@dataclass
class QuantizeOptions:
    """Everything `gan-deploy quantize` decides, as one object."""

    precision: str = "int8"  # one of QUANTIZE_PRECISIONS
    out: str | Path | None = None  # default: lineage.default_out(parent, precision, target)
    target: str = "onnxruntime"  # int8 flavour: INT8_TARGETS
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_seed: int = CALIB_SEED
    calib_method: str = "auto"  # "auto" or one of CALIB_METHODS
    rewrite: bool = True  # ConvTranspose -> Conv + DepthToSpace before INT8
    evaluator: str = "auto"  # fp16: FP16_EVALUATORS
    gate_samples: int = DEFAULT_GATE_SAMPLES
    thresholds: GateThresholds | None = None  # None: gate.THRESHOLDS[precision]
    mixed: bool = True  # int8: when full INT8 fails the gate, search for a mixed INT8/FP32 model
    policy: str | Path | Int8Policy | None = None  # int8: use this policy (calibration, nodes kept FP32); no search
    sensitivity_samples: int | None = None  # gate latents per unit in the sensitivity analysis (default 64)
    speed_rounds: int | None = None  # interleaved FP32/INT8 timing rounds for a mixed model (default 5)
    min_speedup: float = 1.0  # a mixed model slower than this x FP32 is not written
    progress: Callable[[str], None] | None = None  # receives progress lines of the longer INT8 steps

    def __post_init__(self) -> None:
        if self.precision not in QUANTIZE_PRECISIONS:
            raise GanDeployError("unknown reduced precision", repr(self.precision), expected=" or ".join(QUANTIZE_PRECISIONS))
        check_int8_target(self.target)
        check_calib_method(self.calib_method, allow_auto=True)
        check_calib_samples(self.calib_samples)
        _int_at_least("bad calibration seed", self.calib_seed, 0)
        _one_of("unknown FP16 evaluator", self.evaluator, FP16_EVALUATORS)
        _int_at_least("bad number of gate samples", self.gate_samples, 1)
        _int_at_least("bad number of sensitivity samples", self.sensitivity_samples, 1, none_ok=True)
        _int_at_least("bad number of speed rounds", self.speed_rounds, 1, none_ok=True)
        for option, value in (("--calib-samples", self.calib_samples), ("--gate-samples", self.gate_samples),
                              ("--sensitivity-samples", self.sensitivity_samples)):
            if value is not None:
                check_at_most("too many samples", option, value, MAX_QUANTIZE_SAMPLES,
                              "a forward pass each, per candidate model: 1,000x the defaults")
        if isinstance(self.min_speedup, bool) or not isinstance(self.min_speedup, (int, float)) or not self.min_speedup >= 0:
            raise GanDeployError("bad minimum speedup", repr(self.min_speedup), expected="a number >= 0")
        if self.policy is not None and not isinstance(self.policy, (str, Path, Int8Policy)):
            raise GanDeployError("bad INT8 policy", repr(self.policy), expected="a policy file's path or an Int8Policy")
        if self.policy is not None and self.precision != "int8":
            raise GanDeployError("an INT8 policy only applies to int8", f"precision {self.precision}", expected="precision int8")

    def int8_policy(self) -> Int8Policy | None:
        """The given policy, read from its file if it is a path."""
        return Int8Policy.load(self.policy) if isinstance(self.policy, (str, Path)) else self.policy
