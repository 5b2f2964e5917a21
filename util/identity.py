"""Per-identity configuration (config/<id>.yaml over config/default.yaml) and assets (data/<id>/).

The YAML keys and the data files are those of the authors' release (LSP §2, §9), so their
config/May.yaml and data/May/ run unchanged. Relative paths in a config are resolved against the
project root (the folder holding config/), as the release resolved them against its repository root.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from util.errors import InputError, MissingFileError, require_file
from util.landmarks import NUM_POINTS, NUM_SHOULDER_POINTS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "config"
NUM_CANDIDATES = 4
SHOULDER_REF_FRAME = 1  # LSP §1.9: the shoulders and their reference translation come from frame 1


def _merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: values of `override` win; nested mappings merge."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _fill(value: Any, identity: str) -> Any:
    """Replace `{id}` in every string of a nested config."""
    if isinstance(value, dict):
        return {k: _fill(v, identity) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, identity) for v in value]
    return value.replace("{id}", identity) if isinstance(value, str) else value


def read_yaml(path: Path) -> dict:
    """yaml.safe_load a mapping, with errors that name the file."""
    require_file(path, "config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"config file {path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path}: expected a mapping of settings, found {type(data).__name__}")
    return data


def load_config(identity: str, config_dir: str | Path | None = None) -> dict:
    """config/default.yaml overlaid with config/<identity>.yaml, `{id}` filled, paths made absolute."""
    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    id_path = config_dir / f"{identity}.yaml"
    if not id_path.is_file():
        raise MissingFileError(f"--id {identity}: no config file {id_path} (make one with scripts/preprocess.py "
                               f"or copy the release's config/{identity}.yaml)")
    cfg = _fill(_merge(read_yaml(CONFIG_DIR / "default.yaml"), read_yaml(id_path)), identity)
    cfg["_root"] = str(config_dir.resolve().parent)
    cfg["_path"] = str(id_path)
    return cfg


def resolve(cfg: dict, path: str | Path) -> Path:
    """A config path, relative to the project root when not absolute."""
    p = Path(path)
    return p if p.is_absolute() else Path(cfg["_root"]) / p


def _load_array(path: Path, what: str, shape: tuple, dtype: type = np.float32) -> np.ndarray:
    """np.load with a shape check; -1 in `shape` matches any size."""
    require_file(path, what)
    try:
        arr = np.load(path)
    except (ValueError, OSError) as err:
        raise InputError(f"{what} {path}: cannot be read as a .npy array ({err})") from err
    if arr.ndim != len(shape) or any(s not in (-1, a) for s, a in zip(shape, arr.shape)):
        want = "x".join("N" if s == -1 else str(s) for s in shape)
        raise InputError(f"{what} {path}: expected shape {want}, found {'x'.join(map(str, arr.shape))}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what} {path}: contains NaN or infinite values")
    return arr.astype(dtype)


def _load_npz(path: Path, what: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    require_file(path, what)
    try:
        with np.load(path) as data:
            missing = [k for k in keys if k not in data]
            if missing:
                raise InputError(f"{what} {path}: missing arrays {', '.join(missing)} (has {', '.join(data.files)})")
            return {k: np.asarray(data[k]) for k in data.files}
    except (ValueError, OSError) as err:
        raise InputError(f"{what} {path}: cannot be read as an .npz archive ({err})") from err


def load_image_rgb(path: Path, what: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    require_file(path, what)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{what} {path}: cannot be decoded as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass
class IdentityAssets:
    """Everything inference reads from data/<id>/ (LSP §2.1)."""

    root: Path
    mean_pts3d: np.ndarray  # (73, 3) mean of the training landmarks; mouth targets are offsets from it
    tracked_pts3d: np.ndarray  # (N_train, 73, 3) pose-free tracked landmarks (eye replay, base face)
    mean_trans: np.ndarray  # (3,) mean training head translation
    ref_trans: np.ndarray  # (3,) head translation of the shoulder reference frame
    intrinsic: np.ndarray  # (3, 3) camera of the crop
    scale: float  # identity scale of the 3D face
    shoulders3d: np.ndarray  # (18, 3) reference shoulder points
    shoulder_offset: np.ndarray  # (2,) pixel shift of the shoulders for crops padded at the border
    candidates: np.ndarray  # (4, H, W, 3) uint8 RGB appearance images
    apc_base: np.ndarray | None  # (M, 512) APC features of the training speech, for manifold projection

    @property
    def image_size(self) -> tuple[int, int]:
        return self.candidates.shape[1], self.candidates.shape[2]

    @classmethod
    def load(cls, cfg: dict, need_apc_base: bool = True) -> IdentityAssets:
        """Read and check every file; errors name the file and what was expected."""
        ds = cfg["dataset_params"]
        root = resolve(cfg, ds["root"])
        if not root.is_dir():
            raise MissingFileError(f"identity folder not found: {root} (config {cfg['_path']}, dataset_params.root)")
        tracked = _load_array(resolve(cfg, ds["pts3d_path"]), "tracked 3D landmarks", (-1, NUM_POINTS, 3))
        fit = _load_npz(resolve(cfg, ds["fit_data_path"]), "3D fit data", ("trans",))
        trans = np.asarray(fit["trans"], np.float64).reshape(len(fit["trans"]), 3)
        shoulders = _load_array(root / "shoulder_points3D.npy", "3D shoulder points", (-1, NUM_SHOULDER_POINTS, 3))
        ref = min(SHOULDER_REF_FRAME, len(shoulders) - 1, len(trans) - 1)
        candidates = np.stack([load_image_rgb(root / "candidates" / f"normalized_full_{j}.jpg", "candidate image")
                               for j in range(NUM_CANDIDATES)])
        apc_base = None
        if need_apc_base:
            apc_base = _load_array(root / "APC_feature_base.npy", "APC feature database", (-1, -1))
        return cls(
            root=root,
            mean_pts3d=_load_array(root / "mean_pts3d.npy", "mean 3D landmarks", (NUM_POINTS, 3)),
            tracked_pts3d=tracked,
            mean_trans=trans.mean(0),
            ref_trans=trans[ref],
            intrinsic=_load_array(root / "camera_intrinsic.npy", "camera intrinsics", (3, 3), np.float64),
            scale=_load_scale(root / "id_scale.mat"),
            shoulders3d=shoulders[ref].astype(np.float64),
            shoulder_offset=_shoulder_offset(root, candidates.shape[1]),
            candidates=candidates,
            apc_base=apc_base,
        )


def _load_scale(path: Path) -> float:
    from scipy.io import loadmat

    require_file(path, "identity scale")
    try:
        return float(np.asarray(loadmat(str(path))["scale"]).reshape(-1)[0])
    except (KeyError, ValueError, IndexError) as err:
        raise InputError(f"identity scale {path}: expected a MATLAB file with a variable 'scale' ({err})") from err


def _shoulder_offset(root: Path, crop: int) -> np.ndarray:
    """Shift of the shoulder points when the crop window ran past the source frame (LSP §1.10).

    Only for the authors' layout, which has example.png (the source frame size) and change_paras.npz
    (resize scale and crop centre). The release compared the window with 512 rather than with the
    frame size; we compare with the frame size. Our preprocessing stores shoulders in crop pixels.
    """
    example = root / "example.png"
    paras = root / "change_paras.npz"
    if not (example.is_file() and paras.is_file()):
        return np.zeros(2)
    img = cv2.imread(str(example), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"example frame {example}: cannot be decoded as an image")
    p = _load_npz(paras, "crop parameters", ("scale", "xc", "yc"))
    s, xc, yc = (float(np.asarray(p[k]).reshape(-1)[0]) for k in ("scale", "xc", "yc"))
    h, w, half = img.shape[0] * s, img.shape[1] * s, crop / 2
    top, bottom = max(0.0, half - yc), max(0.0, yc + half - h)
    left, right = max(0.0, half - xc), max(0.0, xc + half - w)
    return np.array([right - left, top - bottom])
