"""PortraitPipeline: driving audio -> mouth, head pose, shoulders -> feature maps -> rendered frames.

One identity's networks and assets, loaded once (LSP §1):
    audio side  audio (16 kHz) -> log-mel -> APC -> manifold projection -> Audio2Feature (mouth) and
                Audio2Headpose (sampled pose) -> post-processing -> projection   (streams.py)
    renderer    2D landmarks + shoulders -> feature maps -> Feature2Face -> RGB  (renderer.py)
The output has one frame per 1/fps of audio (N = int(seconds * fps)). The original stopped 15 frames
(the pose lookahead) short of the audio; we pad the end of the features as it did for the mouth, so
the video covers the whole audio. Offline runs feed the same streams as a live session
(session.py), in OFFLINE_CHUNK_SECONDS pieces, so both give the same frames.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from datasets.identity import STAGES, IdentityAssets, load_config, stage_checkpoints
from models.networks import (
    APC,
    NETWORKS,
    APCConfig,
    Audio2FeatureEnsemble,
    Audio2FeatureNet,
    Audio2HeadposeNet,
    Feature2FaceG,
    Feature2FaceGConfig,
)
from models.runtime.manifold import FeatureDatabase
from models.runtime.offline import write_offline
from models.runtime.renderer import ONNX_FILES, FaceRenderer, onnx_renderer_path, resolve_device
from models.runtime.settings import RuntimeSettings, runtime_settings
from models.runtime.streams import AudioEncoder, AudioSide, AudioSideStream, FrameBatch
from util.audio import LogMel, MelConfig
from util.checkpoint import load_network
from util.errors import InputError

log = logging.getLogger("lsp")
OFFLINE_CHUNK_SECONDS = 2.0  # audio fed to the streams at a time offline: small, so the renderer never waits long


@dataclass
class Prediction:
    """Everything the audio side predicts for one clip, N frames."""

    n_frames: int
    fps: float
    face3d: np.ndarray  # (N, 73, 3) pose-free landmarks
    rotation: np.ndarray  # (N, 3) degrees
    translation: np.ndarray  # (N, 3)
    face2d: np.ndarray  # (N, 73, 2) pixels of the crop
    shoulders2d: np.ndarray  # (N, 18, 2) pixels of the crop
    extras: dict = field(default_factory=dict)  # raw samples, features: saved with --save_intermediates


class PortraitPipeline:
    """One identity's audio side and renderer, for offline and live inference."""

    def __init__(self, cfg: dict, audio_side: AudioSide, renderer: FaceRenderer) -> None:
        self.cfg, self.audio_side, self.renderer = cfg, audio_side, renderer
        self.settings: RuntimeSettings = audio_side.settings
        self.assets: IdentityAssets = audio_side.assets
        self.fps = self.settings.fps
        self.sample_rate = audio_side.encoder.mel.cfg.sample_rate
        self.min_frames = max(self.settings.mouth.frame_future, self.settings.pose.frame_future) + 1

    @classmethod
    def from_identity(cls, identity: str, device: str | torch.device = "cpu",
                      config_dir: str | Path | None = None, backend: str = "torch",
                      onnx_threads: int | None = None) -> PortraitPipeline:
        """Load config/<identity>.yaml, data/<identity>/ and the four checkpoints it names (`onnx_threads`:
        see FaceRenderer)."""
        device = device if isinstance(device, torch.device) else resolve_device(device)
        cfg = load_config(identity, config_dir)
        side = load_audio_side(cfg, device)
        try:
            i2i = cfg["model_params"]["Image2Image"]
            g_default = Feature2FaceGConfig(size=str(i2i["size"]), ngf=int(i2i.get("ngf", 64)),
                                            num_downs=int(i2i.get("num_downs", 8)))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"config file {cfg['_path']}: Image2Image size/ngf/num_downs are not "
                             f"valid ({type(err).__name__}: {err})") from err
        netg, _, _ = _load_stage(cfg, "feature2face", g_default, strip=("module.", "netG."))
        renderer = FaceRenderer(netg, side.assets, device, backend, _onnx_file(cfg, backend), onnx_threads=onnx_threads)
        return cls(cfg, side, renderer)

    @classmethod
    def build(cls, cfg: dict, assets: IdentityAssets, apc: APC, a2f: Audio2FeatureNet, a2h: Audio2HeadposeNet,
              netg: Feature2FaceG, device: torch.device, settings: RuntimeSettings | None = None,
              backend: str = "torch") -> PortraitPipeline:
        """Chain loaded networks (settings default to the config's, for networks that carry no meta)."""
        side = build_audio_side(cfg, assets, apc, a2f, a2h, device, settings or runtime_settings(cfg, {}, {}))
        return cls(cfg, side, FaceRenderer(netg, assets, device, backend, _onnx_file(cfg, backend)))

    def check_audio(self, audio: np.ndarray, name: str) -> int:
        """Number of video frames of `audio`; an InputError when it is shorter than the lookahead."""
        n = self.audio_side.encoder.mel.cfg.num_video_frames(len(audio))
        if n < self.min_frames:
            raise InputError(f"driving audio {name}: {len(audio) / self.sample_rate:.2f} s is too short; need at least "
                             f"{self.min_frames / self.fps:.2f} s ({self.min_frames} frames at {self.fps:g} fps, "
                             f"the models' lookahead + 1)")
        return n

    def stream(self, seed: int = 0, sigma_scale: float | None = None,
               poses: tuple[np.ndarray, np.ndarray] | None = None, keep_features: bool = False) -> AudioSideStream:
        """A fresh audio-side stream of this identity."""
        return AudioSideStream(self.audio_side, seed, sigma_scale, poses, keep_features)

    def frame_batches(self, stream: AudioSideStream, audio: np.ndarray) -> Iterator[FrameBatch]:
        """Feed `audio` to `stream` in OFFLINE_CHUNK pieces and yield its frames as they become final."""
        step = int(OFFLINE_CHUNK_SECONDS * self.sample_rate)
        for i in range(0, len(audio), step):
            batch = stream.push(audio[i : i + step])
            if batch is not None:
                yield batch
        batch = stream.finish()[0]
        if batch is not None:
            yield batch

    def predict(self, audio: np.ndarray, name: str = "audio", seed: int = 0, sigma_scale: float | None = None,
                poses: tuple[np.ndarray, np.ndarray] | None = None, keep_features: bool = False) -> Prediction:
        """The audio side over a whole clip, in memory. `keep_features` adds the APC features (2N, d)."""
        n = self.check_audio(audio, name)
        stream = self.stream(seed, sigma_scale, poses, keep_features)
        cat = FrameBatch.concat(list(self.frame_batches(stream, audio)))
        if len(cat) != n:
            raise RuntimeError(f"the audio side gave {len(cat)} frames for {n}")
        extras = {"headpose_samples": cat.raw_pose} if poses is None else {}
        if keep_features:
            extras["apc_features"] = np.concatenate(stream.kept_features)[: 2 * n]
        return Prediction(n, self.fps, cat.face3d, cat.rotation, cat.translation, cat.face2d, cat.shoulders2d, extras)

    def generate(self, audio: np.ndarray, out_dir: Path, name: str, seed: int = 0, sigma_scale: float | None = None,
                 poses: tuple[np.ndarray, np.ndarray] | None = None, batch_size: int = 1,
                 save_intermediates: bool = False, overlap: bool | None = None) -> dict[str, Path]:
        """Audio to <name>.mp4 (with audio), <name>_feature_maps.mp4 and <name>.npz, in flat memory
        (see offline.write_offline); `overlap` defaults to on with CUDA."""
        n = self.check_audio(audio, name)
        stream = self.stream(seed, sigma_scale, poses, save_intermediates)
        overlap = self.renderer.device.type == "cuda" if overlap is None else overlap
        return write_offline(self, stream, self.frame_batches(stream, audio), audio, n, out_dir, name, batch_size,
                             save_intermediates, overlap, chunk_frames=int(OFFLINE_CHUNK_SECONDS * self.fps))


def _onnx_file(cfg: dict, backend: str) -> Path | None:
    return onnx_renderer_path(cfg, backend) if backend in ONNX_FILES else None


def _load_stage(cfg: dict, stage: str, default: object | None = None, paths: list[Path] | None = None,
                **kw: object) -> tuple:
    """The network config[model_params][<stage section>].ckp_path names (or those of `paths`, several of
    them averaged like a list there): (network, its config, meta)."""
    s = STAGES[stage]
    net_cls, config_cls = NETWORKS[s.network]
    what = f"{s.network} checkpoint"
    paths = stage_checkpoints(cfg, stage) if paths is None else paths
    loaded = [load_network(path, s.network, net_cls, config_cls, default or config_cls(), what, **kw) for path in paths]
    if len(loaded) == 1:
        return loaded[0]
    return _ensemble(cfg, stage, paths, loaded)


def _ensemble(cfg: dict, stage: str, paths: list[Path], loaded: list[tuple]) -> tuple:
    """Several loaded checkpoints of one stage (config ckp_path the list `paths`) as one averaging network; they
    must agree on what the runtime reads from their meta (lookahead, rate) and on their input size."""
    for key in ("frame_future", "fps"):
        values = {str(meta.get(key)) for _, _, meta in loaded}
        if len(values) > 1:
            raise InputError(f"config file {cfg['_path']}: the {STAGES[stage].section} checkpoints disagree on "
                             f"{key} ({', '.join(f'{p}: {m.get(key)}' for p, (_, _, m) in zip(paths, loaded))}); "
                             "an ensemble needs checkpoints trained with the same lookahead and rate")
    if len({net.cfg.apc_dim for net, _, _ in loaded}) > 1:
        raise InputError(f"config file {cfg['_path']}: the {STAGES[stage].section} checkpoints take APC features "
                         "of different sizes; an ensemble needs one audio encoder")
    return Audio2FeatureEnsemble([net for net, _, _ in loaded]), loaded[0][1], loaded[0][2]


def load_audio_side(cfg: dict, device: torch.device, with_mouth: bool = True) -> AudioSide:
    """An identity's audio side (APC, manifold, Audio2Feature, Audio2Headpose, settings, assets) from its
    loaded config; needs no renderer, so it works before Feature2Face is trained (and without
    Audio2Feature when `with_mouth` is false: the pose side alone, mouth_net None)."""
    assets = IdentityAssets.load(cfg, need_apc_base=runtime_settings(cfg, {}, {}).encoder.use_lle)
    apc = _load_apc(cfg)
    a2f, _, a2f_meta = _load_stage(cfg, "audio2feature") if with_mouth else (None, None, {})
    a2h, _, a2h_meta = _load_stage(cfg, "audio2headpose")
    return build_audio_side(cfg, assets, apc, a2f, a2h, device, runtime_settings(cfg, a2f_meta, a2h_meta))


def _load_apc(cfg: dict) -> APC:
    mp = cfg["model_params"]
    try:
        apc_default = APCConfig(mel_dim=int(mp["APC"]["mel_dim"]), hidden_size=int(mp["APC"]["hidden_size"]),
                                num_layers=int(mp["APC"]["num_layers"]), residual=bool(mp["APC"]["residual"]))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"config file {cfg['_path']}: APC sizes are not valid ({type(err).__name__}: {err})") from err
    return _load_stage(cfg, "apc", apc_default, optional_prefixes=("postnet.",))[0]


def load_mouth_encoder(cfg: dict, paths: list[Path],
                       device: torch.device) -> tuple[AudioEncoder, torch.nn.Module, dict]:
    """The identity's audio encoder as the runtime runs it (APC and the feature database) and the mouth models
    of `paths` (several averaged), without the pose model or renderer: (encoder, mouth network, its meta)."""
    settings = runtime_settings(cfg, {}, {})
    assets = IdentityAssets.load(cfg, need_apc_base=settings.encoder.use_lle)
    apc = _load_apc(cfg)
    net, _, meta = _load_stage(cfg, "audio2feature", paths=paths)
    return _encoder(apc, assets, settings, device), net.to(device), meta


def _encoder(apc: APC, assets: IdentityAssets, settings: RuntimeSettings, device: torch.device) -> AudioEncoder:
    database = None
    if assets.apc_base is not None and settings.encoder.use_lle:
        if assets.apc_base.shape[1] != apc.cfg.hidden_size:
            raise InputError(f"APC feature database in {assets.root}: features are {assets.apc_base.shape[1]}-d "
                             f"but the APC encoder gives {apc.cfg.hidden_size}-d")
        database = FeatureDatabase(torch.from_numpy(assets.apc_base))
    return AudioEncoder(apc.to(device), LogMel(MelConfig(fps=settings.fps, n_mels=apc.cfg.mel_dim)), database,
                        settings.encoder, device)


def build_audio_side(cfg: dict, assets: IdentityAssets, apc: APC, a2f: Audio2FeatureNet | None, a2h: Audio2HeadposeNet,
                     device: torch.device, settings: RuntimeSettings) -> AudioSide:
    """Chain loaded audio networks with the identity's feature database."""
    return AudioSide(_encoder(apc, assets, settings, device), a2f.to(device) if a2f is not None else None,
                     a2h.to(device), settings, assets, device)
