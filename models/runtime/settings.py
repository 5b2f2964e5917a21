"""Typed inference settings of an identity, built once when it loads from its config and checkpoints.

config/<id>.yaml keeps the release's keys (LSP §2.2); the streams never read it: they get these frozen
dataclasses, whose values were checked here with errors naming the config key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from util.errors import InputError

DEFAULT_SMOOTH_LOOKAHEAD = 2  # frames the mouth smoothing may look ahead (latency = mouth lookahead + this)


@dataclass(frozen=True)
class EncoderSettings:
    """Manifold projection of the audio features (LSP §1.4)."""

    use_lle: bool  # project onto the identity's APC feature database
    knear: int  # neighbours
    blend: float  # 1 = replaced by the projection


@dataclass(frozen=True)
class MouthSettings:
    """Audio2Feature's lookahead and the mouth post-processing (LSP §1.7)."""

    frame_future: int  # the output for frame t is read at step t + frame_future
    sigma: float  # Gaussian smoothing in frames
    smooth_lookahead: int  # frames the smoothing may look ahead
    amp_gains: tuple[float, float, float]  # lip displacement gain per axis
    use_jaw: bool  # use the predicted jaw (the release discarded it)


@dataclass(frozen=True)
class PoseSettings:
    """Audio2Headpose's lookahead, sampling and the pose post-processing (LSP §1.6, §1.9)."""

    frame_future: int  # pose t needs audio up to frame t + frame_future
    sigma_scale: float  # default sampling sigma scale (demo --sigma_scale overrides)
    rot_gain: float
    trans_gain: float
    rot_sigma: float  # causal smoothing, frames
    trans_sigma: float
    shoulder_gain: float  # shoulders follow this fraction of the head translation
    noise_correlation: float = 0.0  # time constant of the sampling noise, frames (0: independent per frame)
    # per-dimension affine map of the sampled pose (rotation xyz, translation xyz) before the release's
    # gains: motion_gain * pose + motion_offset; written by the motion calibration (models/runtime/motion.py)
    motion_gain: tuple[float, ...] = (1.0,) * 6
    motion_offset: tuple[float, ...] = (0.0,) * 6


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything the audio side and the renderer need besides networks and assets."""

    fps: float
    encoder: EncoderSettings
    mouth: MouthSettings
    pose: PoseSettings
    save_feature_maps: bool  # also write the feature-map video

    @property
    def lookahead(self) -> int:
        """Frames of audio beyond frame t needed before frame t is final."""
        return max(self.mouth.frame_future + self.mouth.smooth_lookahead, self.pose.frame_future)


class _Reader:
    """Typed access to config values, with errors that name the config file and key."""

    def __init__(self, cfg: dict) -> None:
        self.cfg, self.path = cfg, cfg.get("_path", "config")

    def get(self, *keys: str, default: Any = None) -> Any:
        node: Any = self.cfg
        for k in keys:
            if not isinstance(node, dict):
                raise InputError(f"config file {self.path}: {'.'.join(keys[:-1])} must be a mapping")
            node = node.get(k, default if k == keys[-1] else {})
        return node

    def fail(self, keys: tuple[str, ...], value: Any, expected: str) -> InputError:
        return InputError(f"config file {self.path}: {'.'.join(keys)} must be {expected}, found {value!r}")

    def number(self, *keys: str, lo: float = -math.inf, default: Any = None, integer: bool = False) -> float:
        value = self.get(*keys, default=default)
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
            raise self.fail(keys, value, kind)
        if not math.isfinite(value) or value < lo:
            raise self.fail(keys, value, f"{kind} >= {lo:g}")
        return int(value) if integer else float(value)

    def flag(self, *keys: str, default: Any = None) -> bool:
        value = self.get(*keys, default=default)
        if value not in (True, False, 0, 1):
            raise self.fail(keys, value, "true/false (or 1/0)")
        return bool(value)


def _finite(reader: _Reader, keys: tuple[str, ...], v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise reader.fail(keys, v, "a list of finite numbers")
    return float(v)


def _lip_gains(r: _Reader) -> tuple[float, float, float]:
    """Audio2Mouth.AMP: ['XYZ', x, y, z] or ['XY', x, y] (z unchanged), the release's format."""
    keys = ("model_params", "Audio2Mouth", "AMP")
    amp = r.get(*keys)
    if not isinstance(amp, list) or not amp or amp[0] not in ("XYZ", "XY") or len(amp) != len(amp[0]) + 1:
        raise r.fail(keys, amp, "['XYZ', x, y, z] or ['XY', x, y]")
    gains = [_finite(r, keys, g) for g in amp[1:]]
    return (gains[0], gains[1], gains[2] if len(gains) == 3 else 1.0)


def runtime_settings(cfg: dict, a2f_meta: dict, a2h_meta: dict) -> RuntimeSettings:
    """Settings from an identity's config and the metas of its Audio2Feature / Audio2Headpose files (the
    metas, written by training, win over the config's defaults for a released checkpoint)."""
    r = _Reader(cfg)
    fps = _meta_number(r, a2f_meta, "fps", ("fps",))
    if "fps" in a2h_meta and float(a2h_meta["fps"]) != fps:
        raise InputError(f"config file {r.path}: Audio2Feature was trained at {fps:g} fps but Audio2Headpose at "
                         f"{a2h_meta['fps']:g} fps; retrain one so that both work at one rate")
    a2f, a2h = ("model_params", "Audio2Mouth"), ("model_params", "Headpose")
    return RuntimeSettings(
        fps=fps,
        encoder=EncoderSettings(use_lle=r.flag("model_params", "APC", "use_LLE", default=True),
                                knear=int(r.number("model_params", "APC", "Knear", lo=1, integer=True)),
                                blend=r.number("model_params", "APC", "LLE_percent", lo=0)),
        mouth=MouthSettings(
            frame_future=int(_meta_number(r, a2f_meta, "frame_future", (*a2f, "frame_future"), integer=True)),
            sigma=r.number(*a2f, "smooth", lo=0),
            smooth_lookahead=int(r.number(*a2f, "smooth_lookahead", lo=0, default=DEFAULT_SMOOTH_LOOKAHEAD,
                                          integer=True)),
            amp_gains=_lip_gains(r), use_jaw=r.flag(*a2f, "use_jaw", default=True)),
        pose=PoseSettings(
            frame_future=int(_meta_number(r, a2h_meta, "frame_future", (*a2h, "frame_future"), integer=True)),
            sigma_scale=r.number(*a2h, "sigma", lo=0),
            rot_gain=_pair(r, (*a2h, "AMP"))[0], trans_gain=_pair(r, (*a2h, "AMP"))[1],
            rot_sigma=_pair(r, (*a2h, "smooth"), lo=0)[0], trans_sigma=_pair(r, (*a2h, "smooth"), lo=0)[1],
            shoulder_gain=r.number(*a2h, "shoulder_AMP"),
            noise_correlation=r.number(*a2h, "noise_correlation", lo=0, default=0.0),
            motion_gain=_six(r, (*a2h, "motion_gain"), 1.0, lo=0), motion_offset=_six(r, (*a2h, "motion_offset"), 0.0)),
        save_feature_maps=r.flag("model_params", "Image2Image", "save_input", default=True),
    )


def _pair(r: _Reader, keys: tuple[str, ...], lo: float = -math.inf) -> tuple[float, float]:
    value = r.get(*keys)
    if not isinstance(value, list) or len(value) != 2:
        raise r.fail(keys, value, "a list of 2 numbers")
    a, b = (_finite(r, keys, v) for v in value)
    if min(a, b) < lo:
        raise r.fail(keys, value, f"a list of 2 numbers >= {lo:g}")
    return a, b


def _six(r: _Reader, keys: tuple[str, ...], default: float, lo: float = -math.inf) -> tuple[float, ...]:
    """Six numbers (rotation xyz, translation xyz); absent means `default` for each."""
    value = r.get(*keys)
    if value is None:
        return (default,) * 6
    if not isinstance(value, list) or len(value) != 6:
        raise r.fail(keys, value, "a list of 6 numbers (rotation x, y, z, translation x, y, z)")
    six = tuple(_finite(r, keys, v) for v in value)
    if min(six) < lo:
        raise r.fail(keys, value, f"a list of 6 numbers >= {lo:g}")
    return six


def _meta_number(r: _Reader, meta: dict, name: str, keys: tuple[str, ...], integer: bool = False) -> float:
    """A value recorded in a checkpoint's meta, else the config's. When both the checkpoint and the
    identity's own config state it, they must agree: a lookahead or rate the network was not trained
    with would misalign every frame silently."""
    if name in meta:
        value = meta[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (name == "fps" and value <= 0) or (integer and value != int(value)):
            raise InputError(f"checkpoint of config file {r.path}: its recorded {name} is impossible ({value!r})")
        own: Any = r.cfg.get("_own", {})
        for k in keys:
            own = own.get(k) if isinstance(own, dict) else None
        if own is not None and own != value:
            raise InputError(f"config file {r.path}: {'.'.join(keys)} is {own!r}, but the network was trained with "
                             f"{value!r}; set it to {value!r} (or retrain with {name} {own!r})")
        return int(value) if integer else float(value)
    value = r.number(*keys, lo=0, integer=integer)
    if name == "fps" and value <= 0:
        raise r.fail(keys, value, "a number > 0")
    return value
