"""An identity: its files in data/<id>/, its config/<id>.yaml, and what inference reads from them.

The one place that names every file of an identity folder (the authors' release layout, LSP §2.1,
plus our training clips), the training stages' networks and config sections, and the config itself
(config/<id>.yaml over config/default.yaml; the release's keys, so their config/May.yaml and data/May/
run unchanged). Relative paths in a config are resolved against the project root (the folder holding
config/), as the release resolved them against its repository root.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from util.checkpoint import network_path
from util.errors import InputError, MissingFileError, require_file
from util.geometry import normalise_pose
from util.io import check_array, load_array, load_image_rgb, load_npz, read_yaml, write_text
from util.landmarks import NUM_CANDIDATES, NUM_POINTS, NUM_SHOULDER_POINTS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "config"
DATA_DIR = PROJECT_ROOT / "data"
BUNDLED_APC = DATA_DIR / "apc" / "apc_h256.pth"  # the audio encoder shipped with the project (data/apc/SOURCES.md)
SHOULDER_REF_FRAME = 1  # LSP §1.9: the shoulders and their reference translation come from frame 1
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Stage:
    """A trained stage: its --model name, its network (net<Name>, checkpoint files) and its config section."""

    model: str
    network: str
    section: str


STAGES = {s.model: s for s in (Stage("apc", "APC", "APC"), Stage("audio2feature", "Audio2Feature", "Audio2Mouth"),
                               Stage("audio2headpose", "Audio2Headpose", "Headpose"),
                               Stage("feature2face", "Feature2Face", "Image2Image"))}
# Stages whose config ckp_path may list several checkpoints of the same recipe (trained with different seeds):
# the runtime averages their outputs (an ensemble; one path is the release's form)
ENSEMBLE_STAGES = ("audio2feature",)


def check_identity_name(name: str, flag: str = "--id") -> str:
    """`name` if it can name an identity: letters, digits, '_', '-', '.', no path separators, not '.' or '..'."""
    if not isinstance(name, str) or not _NAME.match(name) or set(name) == {"."}:
        raise InputError(f"{flag} '{name}': an identity name is letters, digits, '_', '-' and '.' (no '/', not "
                         "'.' or '..', at most 100 characters)")
    return name


class ClipFiles:
    """The files of one training clip, data/<id>/clips/<name>/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.frames = root / "frames"  # the crops at the source rate, %06d.jpg
        self.audio = root / "audio.wav"  # 16 kHz mono
        self.tracks = root / "tracks.npz"  # source-rate tracks (renderer training)
        self.apc_features = root / "apc_features.npy"  # two APC frames per model frame

    def frame(self, j: int) -> Path:
        return self.frames / f"{j:06d}.jpg"

    def model_tracks(self, fps: float) -> Path:
        """Tracks resampled to the model rate (audio stages)."""
        return self.root / f"tracks_{fps:g}fps.npz"


class IdentityFiles:
    """Every file of data/<id>/ by name."""

    SPLITS = {"train": "train_list.txt", "val": "val_list.txt"}

    def __init__(self, root: str | Path) -> None:
        r = self.root = Path(root)
        self.mean_pts3d = r / "mean_pts3d.npy"  # (73, 3) mean training shape; mouth targets are offsets from it
        self.tracked_pts3d = r / "tracked3D_normalized_pts_fix_contour.npy"  # (N, 73, 3) pose-free landmarks
        self.tracked_pts2d = r / "tracked2D_normalized_pts_fix_contour.npy"  # (N, 73, 2) crop pixels
        self.fit_data = r / "3d_fit_data.npz"  # trans (N, 3, 1), rot_angles (N, 3), pts_3d
        self.camera = r / "camera_intrinsic.npy"  # (3, 3)
        self.id_scale = r / "id_scale.mat"
        self.change_paras = r / "change_paras.npz"  # crop scale and centre
        self.shoulders3d = r / "shoulder_points3D.npy"  # (N, 18, 3)
        self.shoulders2d = r / "normalized_shoulder_points.npy"  # (N, 18, 2)
        self.example_frame = r / "example.png"  # the release's source-frame example (padding offset)
        self.apc_base = r / "APC_feature_base.npy"  # (M, D) APC features of the training speech
        self.candidates = r / "candidates"
        self.meta = r / "meta.json"  # preprocessing's record (ours)
        self.work = r / "work"  # preprocessing's cache
        self.overlay = r / "overlay.mp4"

    def candidate(self, j: int) -> Path:
        return self.candidates / f"normalized_full_{j}.jpg"

    def split_list(self, split: str) -> Path:
        return self.root / self.SPLITS[split]

    def clip(self, name: str) -> ClipFiles:
        return ClipFiles(self.root / "clips" / name)

    def clips(self, split: str) -> list[str]:
        """Clip names of a split (empty when its list is missing)."""
        path = self.split_list(split)
        if not path.is_file():
            return []
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def write_split(self, split: str, clips: list[str]) -> None:
        write_text(self.split_list(split), "".join(f"{c}\n" for c in clips))

    def load_candidates(self) -> np.ndarray:
        """The 4 candidate images, (4, H, W, 3) uint8 RGB, all of one size."""
        images = [load_image_rgb(self.candidate(j), "candidate image") for j in range(NUM_CANDIDATES)]
        if len({im.shape for im in images}) > 1:
            raise InputError(f"candidate images in {self.candidates}: sizes differ ({[im.shape for im in images]})")
        return np.stack(images)

    def apc_dim(self) -> int:
        """Size of the identity's APC features (the database's width)."""
        if not self.apc_base.is_file():
            raise MissingFileError(f"{self.apc_base} not found: this identity has no APC features yet; make them "
                                   f"with python scripts/preprocess.py --id {self.root.name} --only apc_features "
                                   "--apc_ckpt <APC checkpoint>")
        try:
            shape = np.load(self.apc_base, mmap_mode="r", allow_pickle=False).shape
        except (ValueError, OSError) as err:
            raise InputError(f"APC feature database {self.apc_base}: cannot be read ({err})") from err
        if len(shape) != 2:
            raise InputError(f"APC feature database {self.apc_base}: expected shape NxD, found {shape}")
        return int(shape[1])


# ---------------------------------------------------------------------------------------------- config
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


def load_config(identity: str, config_dir: str | Path | None = None) -> dict:
    """config/default.yaml overlaid with config/<identity>.yaml, `{id}` filled, its structure checked."""
    check_identity_name(identity)
    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    id_path = config_dir / f"{identity}.yaml"
    if not id_path.is_file():
        raise MissingFileError(f"--id {identity}: no config file {id_path} (make one with scripts/preprocess.py "
                               f"or copy the release's config/{identity}.yaml)")
    own = read_yaml(id_path)
    cfg = _fill(_merge(read_yaml(CONFIG_DIR / "default.yaml"), own), identity)
    for section in ("model_params", "dataset_params"):
        if not isinstance(cfg.get(section), dict):
            raise InputError(f"config file {id_path}: {section} must be a mapping, found {cfg.get(section)!r}")
    for stage in STAGES.values():
        params = cfg["model_params"].get(stage.section)
        if not isinstance(params, dict):
            raise InputError(f"config file {id_path}: model_params.{stage.section} must be a mapping, found {params!r}")
        stage_checkpoints(cfg | {"_path": str(id_path)}, stage.model)
    for key in ("root", "fit_data_path", "pts3d_path"):
        config_path(cfg | {"_path": str(id_path)}, ("dataset_params", key))
    cfg["_root"] = str(config_dir.resolve().parent)
    cfg["_path"] = str(id_path)
    cfg["_own"] = own  # what the identity's own file says, apart from the defaults
    return cfg


def config_path(cfg: dict, keys: tuple[str, ...]) -> Path:
    """The path a config entry holds, relative to the project root when not absolute; InputError when the
    entry is not a path."""
    value: Any = cfg
    for k in keys:
        value = value.get(k) if isinstance(value, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"config file {cfg.get('_path', '?')}: {'.'.join(keys)} must be a path, found {value!r}")
    return resolve(cfg, value)


def stage_checkpoints(cfg: dict, stage: str) -> list[Path]:
    """The checkpoints config[model_params][<stage section>].ckp_path names: one path, or for an
    ENSEMBLE_STAGES stage a non-empty list of paths; InputError otherwise."""
    keys = ("model_params", STAGES[stage].section, "ckp_path")
    section = cfg["model_params"].get(keys[1])
    value = section.get("ckp_path") if isinstance(section, dict) else None
    if stage not in ENSEMBLE_STAGES or not isinstance(value, list):
        return [config_path(cfg, keys)]
    if not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputError(f"config file {cfg.get('_path', '?')}: {'.'.join(keys)} must be a path or a non-empty list "
                         f"of paths, found {value!r}")
    return [resolve(cfg, v) for v in value]


def resolve(cfg: dict, path: str | Path) -> Path:
    """A config path; a relative one is looked up in the config's project (the folder holding config/), then
    in this project (bundled files such as data/apc/ referenced from a config kept elsewhere)."""
    p = Path(path)
    if p.is_absolute():
        return p
    here = Path(cfg.get("_root", PROJECT_ROOT)) / p
    return here if here.exists() or not (PROJECT_ROOT / p).exists() else PROJECT_ROOT / p


def project_path(path: Path) -> str:
    """A path as config files write it: ./relative to the project root when inside it."""
    path = Path(path).resolve()
    try:
        return "./" + path.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def write_config(config_dir: Path, identity: str, root: Path, fps: float,
                 checkpoints_dir: str = "./checkpoints") -> Path:
    """config/<id>.yaml for a new identity; an existing one is the user's and is left as it is."""
    import yaml

    path = Path(config_dir) / f"{check_identity_name(identity)}.yaml"
    if path.is_file():
        return path
    files = IdentityFiles(root)
    trained = {s.section: {"ckp_path": f"{checkpoints_dir}/{identity}_{s.model}/"
                                       + network_path(".", "latest", s.network).name}
               for s in STAGES.values() if s.model != "apc"}
    cfg = {"fps": fps, "model_params": trained,
           "dataset_params": {"root": f"{project_path(root)}/", "fit_data_path": project_path(files.fit_data),
                              "pts3d_path": project_path(files.tracked_pts3d)}}
    header = (f"# Identity '{identity}', written by scripts/preprocess.py; edit freely, it is never overwritten.\n"
              "# Keys not given here come from config/default.yaml; train.py updates the ckp_path entries.\n")
    write_text(path, header + yaml.safe_dump(cfg, sort_keys=False))
    return path


def set_config_value(config_dir: Path, identity: str, keys: tuple[str, ...], value: object) -> bool:
    """Set one nested key of config/<id>.yaml, keeping the rest (comments are not kept); True if it changed."""
    import yaml

    path = Path(config_dir) / f"{check_identity_name(identity)}.yaml"
    cfg = read_yaml(path) if path.is_file() else {}
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.setdefault(k, {}), dict):
            raise InputError(f"config file {path}: {k} must be a mapping, found {node[k]!r}")
        node = node[k]
    if node.get(keys[-1]) == value:
        return False
    node[keys[-1]] = value
    lines = path.read_text().splitlines() if path.is_file() else []
    header = "".join(line + "\n" for line in lines if line.startswith("#"))
    write_text(path, header + yaml.safe_dump(cfg, sort_keys=False))
    return True


# ---------------------------------------------------------------------------------------------- assets
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
    rest_pose: np.ndarray | None = None  # (6,) mean training pose in the pose model's space (normalise_pose):
    # sampled head motion eases in from it; None when the fit data has no rot_angles

    @property
    def image_size(self) -> tuple[int, int]:
        return self.candidates.shape[1], self.candidates.shape[2]

    @classmethod
    def load(cls, cfg: dict, need_apc_base: bool = True) -> IdentityAssets:
        """Read and check every file; errors name the file and what was expected."""
        root = config_path(cfg, ("dataset_params", "root"))
        if not root.is_dir():
            raise MissingFileError(f"identity folder not found: {root} (config {cfg['_path']}, dataset_params.root)")
        files = IdentityFiles(root)
        tracked = load_array(config_path(cfg, ("dataset_params", "pts3d_path")), "tracked 3D landmarks",
                             (-1, NUM_POINTS, 3))
        fit_path = config_path(cfg, ("dataset_params", "fit_data_path"))
        fit = load_npz(fit_path, "3D fit data", ("trans",))
        trans = check_array(fit["trans"], fit_path, "3D fit data 'trans'", (-1, 3, -1)).reshape(-1, 3)
        shoulders = load_array(files.shoulders3d, "3D shoulder points", (-1, NUM_SHOULDER_POINTS, 3))
        if not (len(tracked) and len(trans) and len(shoulders)):
            raise InputError(f"identity folder {root}: tracked landmarks, 3D fit data and shoulders need >= 1 frame")
        ref = min(SHOULDER_REF_FRAME, len(shoulders) - 1, len(trans) - 1)
        rest = None
        if "rot_angles" in fit:
            rot = check_array(fit["rot_angles"], fit_path, "3D fit data 'rot_angles'", (-1, 3))
            if len(rot):  # translation's mean is 0 in the model's space (it is relative to mean_trans)
                rest = normalise_pose(rot, np.zeros((len(rot), 3)), np.zeros(3)).mean(0)
        candidates = files.load_candidates()
        return cls(
            root=root,
            mean_pts3d=load_array(files.mean_pts3d, "mean 3D landmarks", (NUM_POINTS, 3)),
            tracked_pts3d=tracked,
            mean_trans=trans.astype(np.float64).mean(0),
            ref_trans=trans[ref].astype(np.float64),
            intrinsic=load_array(files.camera, "camera intrinsics", (3, 3), np.float64),
            scale=_load_scale(files.id_scale),
            shoulders3d=shoulders[ref].astype(np.float64),
            shoulder_offset=_shoulder_offset(files, candidates.shape[1]),
            candidates=candidates,
            apc_base=load_array(files.apc_base, "APC feature database", (-1, -1)) if need_apc_base else None,
            rest_pose=rest,
        )


def _load_scale(path: Path) -> float:
    from scipy.io import loadmat

    require_file(path, "identity scale")
    try:
        scale = float(np.asarray(loadmat(str(path))["scale"], dtype=np.float64).reshape(-1)[0])
    except Exception as err:  # scipy raises its own types (MatReadError, ...) besides the usual ones
        raise InputError(f"identity scale {path}: expected a MATLAB file with a number 'scale' ({err})") from err
    if not np.isfinite(scale) or scale <= 0:
        raise InputError(f"identity scale {path}: expected a positive number, found {scale}")
    return scale


def _shoulder_offset(files: IdentityFiles, crop: int) -> np.ndarray:
    """Shift of the shoulder points when the crop window ran past the source frame (LSP §1.10).

    Only for the authors' layout, which has example.png (the source frame size) and change_paras.npz
    (resize scale and crop centre). The release compared the window with 512 rather than with the
    frame size; we compare with the frame size. Our preprocessing stores shoulders in crop pixels.
    """
    if not (files.example_frame.is_file() and files.change_paras.is_file()):
        return np.zeros(2)
    img = load_image_rgb(files.example_frame, "example frame")
    p = load_npz(files.change_paras, "crop parameters", ("scale", "xc", "yc"))
    s, xc, yc = (float(np.asarray(p[k], np.float64).reshape(-1)[0]) for k in ("scale", "xc", "yc"))
    h, w, half = img.shape[0] * s, img.shape[1] * s, crop / 2
    top, bottom = max(0.0, half - yc), max(0.0, yc + half - h)
    left, right = max(0.0, half - xc), max(0.0, xc + half - w)
    return np.array([right - left, top - bottom])
