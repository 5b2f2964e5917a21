"""PortraitPipeline: driving audio -> mouth, head pose, shoulders -> feature maps -> rendered frames.

Stages are objects with one call each (LSP §1):
    AudioEncoder        audio (16 kHz) -> log-mel -> APC features -> manifold projection  (2N, 512)
    MouthPredictor      APC -> Audio2Feature -> post-processing -> pose-free face          (N, 73, 3)
    HeadPosePredictor   APC -> Audio2Headpose sampling -> post-processing                 (N, 3) x 2
    FaceRenderer        2D landmarks + shoulders -> feature maps -> Feature2Face          (N, H, W, 3)
The output has one frame per 1/fps of audio (N = int(seconds * fps)). The original stopped 15 frames
(the pose lookahead) short of the audio; we pad the end of the features as it did for the mouth, so
the video covers the whole audio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.networks import (
    APC,
    APCConfig,
    Audio2FeatureConfig,
    Audio2FeatureNet,
    Audio2HeadposeConfig,
    Audio2HeadposeNet,
    Feature2FaceG,
    Feature2FaceGConfig,
)
from models.streaming import AudioSideStream, FrameBatch
from util.audio import LogMel, MelConfig
from util.checkpoint import load_network
from util.errors import InputError
from util.identity import IdentityAssets, load_config, resolve
from util.landmarks import feature_map
from util.manifold import FeatureDatabase, project_to_manifold

log = logging.getLogger("lsp")
OFFLINE_CHUNK_SECONDS = 10.0  # audio fed to the streams at a time by predict() and generate()
QUEUED_FRAMES = 16  # frames that may wait between two overlapped stages
DEFAULT_SMOOTH_LOOKAHEAD = 2  # frames the mouth smoothing may look ahead (latency = 18 + this frames)


def onnx_renderer_path(cfg: dict) -> Path:
    """Config Image2Image.onnx_path, or the renderer checkpoint's path with the suffix .onnx."""
    i2i = cfg["model_params"]["Image2Image"]
    if i2i.get("onnx_path"):
        return resolve(cfg, i2i["onnx_path"])
    return resolve(cfg, i2i["ckp_path"]).with_suffix(".onnx")


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device, with a clear error when CUDA is unavailable."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"--device {name}: expected cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is available here (torch {torch.__version__}); "
                         "use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: expected cpu, cuda or cuda:N")
    return device


class AudioEncoder:
    """Audio samples -> manifold-projected APC features (2N, hidden), two per video frame."""

    def __init__(self, apc: APC, mel_cfg: MelConfig, database: FeatureDatabase | None, knear: int, blend: float,
                 device: torch.device) -> None:
        self.apc, self.mel, self.database = apc.to(device), LogMel(mel_cfg), database
        self.knear, self.blend, self.device = knear, blend, device

    @torch.no_grad()
    def __call__(self, audio: np.ndarray) -> torch.Tensor:
        mel = torch.from_numpy(self.mel(audio)).to(self.device)  # (2N, 80)
        feats, _ = self.apc(mel[None])  # (1, 2N, H)
        feats = feats[0].cpu()
        if self.database is not None:
            feats = project_to_manifold(feats, self.database, self.knear, self.blend)
        return feats


class MouthPredictor:
    """Audio2Feature and the mouth post-processing settings of an identity (run by MouthStream)."""

    def __init__(self, net: Audio2FeatureNet, frame_future: int, assets: IdentityAssets, params: dict,
                 device: torch.device) -> None:
        self.net, self.frame_future, self.assets, self.device = net.to(device), frame_future, assets, device
        self.sigma, self.amp = float(params["smooth"]), list(params["AMP"])
        self.smooth_lookahead = int(params.get("smooth_lookahead", DEFAULT_SMOOTH_LOOKAHEAD))
        self.use_jaw = bool(params.get("use_jaw", True))


class HeadPosePredictor:
    """Audio2Headpose and the pose post-processing settings of an identity (run by PoseStream)."""

    def __init__(self, net: Audio2HeadposeNet, frame_future: int, assets: IdentityAssets, params: dict,
                 device: torch.device) -> None:
        self.net, self.frame_future, self.assets, self.device = net.to(device), frame_future, assets, device
        self.gains = [float(g) for g in params["AMP"]]
        self.sigmas = [float(s) for s in params["smooth"]]


class FaceRenderer:
    """2D landmarks and shoulders -> feature maps -> RGB frames with Feature2Face.

    Backends: torch (eager; on CUDA with channels-last memory and fp16/bf16 autocast), compile (the
    same through torch.compile; on CUDA with CUDA graphs; the first call of each batch size compiles,
    which takes a while), or onnx (onnxruntime on the CPU, from the file scripts/export_onnx.py writes).
    """

    def __init__(self, net: Feature2FaceG, assets: IdentityAssets, device: torch.device, backend: str = "torch",
                 onnx_path: Path | None = None, half: bool = True) -> None:
        self.net, self.size, self.device = net.to(device), assets.image_size, device
        cand = torch.from_numpy(assets.candidates).permute(0, 3, 1, 2).float() / 255 * 2 - 1  # (4, 3, H, W)
        self.candidates = cand.reshape(1, -1, *self.size).to(device)  # (1, 12, H, W) in [-1, 1]
        if self.net.cfg.input_nc != 1 + self.candidates.shape[1]:
            raise InputError(f"Feature2Face expects {self.net.cfg.input_nc} input channels, but a feature map "
                             f"and 4 candidates make {1 + self.candidates.shape[1]}")
        self.autocast = half and device.type == "cuda"
        if device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.session, self._candidates_np = None, None
        if backend == "compile":
            self.net = compile_renderer(self.net, device)
        elif backend == "onnx":
            self.session = _onnx_session(onnx_path)

    def warm_up(self, batch_size: int = 1) -> None:
        """Render one blank batch, so a compiler or runtime does its first-call work before frames are due."""
        self(np.zeros((batch_size, *self.size), np.uint8))

    def feature_maps(self, face2d: np.ndarray, shoulders2d: np.ndarray) -> np.ndarray:
        """(B, 73, 2) and (B, 18, 2) pixel coordinates -> (B, H, W) uint8 line drawings."""
        return np.stack([feature_map(f, s, self.size) for f, s in zip(face2d, shoulders2d)])

    @torch.no_grad()
    def __call__(self, maps: np.ndarray) -> np.ndarray:
        """(B, H, W) uint8 feature maps -> (B, H, W, 3) uint8 RGB frames."""
        if self.session is not None:
            return self._run_onnx(maps)
        fmap = torch.from_numpy(maps).to(self.device).float()[:, None] / 255  # (B, 1, H, W) in {0, 1}
        x = torch.cat([fmap, self.candidates.expand(len(maps), -1, -1, -1)], 1)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = torch.bfloat16 if self.autocast and torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast):
            out = self.net(x)  # (B, 3, H, W) in [-1, 1]
        img = ((out.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return img.permute(0, 2, 3, 1).cpu().numpy()

    def _run_onnx(self, maps: np.ndarray) -> np.ndarray:
        # NumPy only around onnxruntime: torch ops here would leave torch's OpenMP threads spinning on
        # the cores onnxruntime's own threads need (measured: a third slower per frame on 2 cores).
        if self._candidates_np is None:
            self._candidates_np = self.candidates.cpu().numpy()
        x = np.empty((len(maps), 1 + self._candidates_np.shape[1], *maps.shape[1:]), np.float32)
        np.multiply(maps[:, None], np.float32(1 / 255), out=x[:, :1], casting="unsafe")
        x[:, 1:] = self._candidates_np
        out = self.session.run(None, {"input": x})[0]  # (B, 3, H, W) in [-1, 1]
        img = np.clip(np.rint((out + 1) * 127.5), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(img.transpose(0, 2, 3, 1))


def compile_renderer(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile for the renderer: CUDA graphs on a GPU (mode reduce-overhead), inductor on a CPU
    (measured 1.24x eager for the example's 256² renderer on 2 cores; ONNX is faster there)."""
    log.info("renderer: torch.compile; the first frames of each batch size wait for the compiler")
    return torch.compile(net, mode="reduce-overhead" if device.type == "cuda" else "default")


def _onnx_session(path: Path | None):
    from util.errors import require_file

    if path is None:
        raise InputError("--backend onnx: no ONNX renderer path (config Image2Image.onnx_path)")
    require_file(path, "ONNX renderer (make it with: python scripts/export_onnx.py --id <id>)")
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise InputError("--backend onnx needs onnxruntime: pip install -r requirements.txt") from err
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


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
    """One identity's networks and assets, chained for offline inference."""

    def __init__(self, cfg: dict, assets: IdentityAssets, encoder: AudioEncoder, mouth: MouthPredictor,
                 headpose: HeadPosePredictor, renderer: FaceRenderer, fps: float) -> None:
        self.cfg, self.assets, self.fps = cfg, assets, fps
        self.encoder, self.mouth, self.headpose, self.renderer = encoder, mouth, headpose, renderer
        self.sample_rate = encoder.mel.cfg.sample_rate
        self.min_frames = max(mouth.frame_future, headpose.frame_future) + 1

    @classmethod
    def from_identity(cls, identity: str, device: str | torch.device = "cpu",
                      config_dir: str | Path | None = None, backend: str = "torch") -> PortraitPipeline:
        """Load config/<identity>.yaml, data/<identity>/ and the four checkpoints it names."""
        device = device if isinstance(device, torch.device) else resolve_device(device)
        cfg = load_config(identity, config_dir)
        mp = cfg["model_params"]
        use_lle = bool(mp["APC"].get("use_LLE", 1))
        assets = IdentityAssets.load(cfg, need_apc_base=use_lle)
        apc_default = APCConfig(mel_dim=int(mp["APC"]["mel_dim"]), hidden_size=int(mp["APC"]["hidden_size"]),
                                num_layers=int(mp["APC"]["num_layers"]), residual=bool(mp["APC"]["residual"]))
        apc, _, _ = load_network(resolve(cfg, mp["APC"]["ckp_path"]), "APC", APC, APCConfig, apc_default,
                                 "APC checkpoint", optional_prefixes=("postnet.",))
        a2f, _, a2f_meta = load_network(resolve(cfg, mp["Audio2Mouth"]["ckp_path"]), "Audio2Feature",
                                        Audio2FeatureNet, Audio2FeatureConfig, Audio2FeatureConfig(),
                                        "Audio2Feature checkpoint")
        a2h, _, a2h_meta = load_network(resolve(cfg, mp["Headpose"]["ckp_path"]), "Audio2Headpose",
                                        Audio2HeadposeNet, Audio2HeadposeConfig, Audio2HeadposeConfig(),
                                        "Audio2Headpose checkpoint")
        i2i = mp["Image2Image"]
        g_default = Feature2FaceGConfig(size=str(i2i["size"]), ngf=int(i2i.get("ngf", 64)),
                                        num_downs=int(i2i.get("num_downs", 8)))
        netg, _, _ = load_network(resolve(cfg, mp["Image2Image"]["ckp_path"]), "Feature2Face", Feature2FaceG,
                                  Feature2FaceGConfig, g_default, "Feature2Face checkpoint",
                                  strip=("module.", "netG."))
        return cls.build(cfg, assets, apc, a2f, a2h, netg, device, a2f_meta, a2h_meta, backend)

    @classmethod
    def build(cls, cfg: dict, assets: IdentityAssets, apc: APC, a2f: Audio2FeatureNet, a2h: Audio2HeadposeNet,
              netg: Feature2FaceG, device: torch.device, a2f_meta: dict | None = None,
              a2h_meta: dict | None = None, backend: str = "torch") -> PortraitPipeline:
        """Chain loaded networks; the metas (fps, lookahead) override the config's defaults."""
        mp, a2f_meta, a2h_meta = cfg["model_params"], a2f_meta or {}, a2h_meta or {}
        fps = float(a2f_meta.get("fps", cfg.get("fps", 60)))
        database = None
        if assets.apc_base is not None:
            if assets.apc_base.shape[1] != apc.cfg.hidden_size:
                raise InputError(f"APC feature database {assets.root / 'APC_feature_base.npy'}: features are "
                                 f"{assets.apc_base.shape[1]}-d but the APC encoder gives {apc.cfg.hidden_size}-d")
            database = FeatureDatabase(torch.from_numpy(assets.apc_base))
        encoder = AudioEncoder(apc, MelConfig(fps=fps, n_mels=apc.cfg.mel_dim), database,
                               int(mp["APC"]["Knear"]), float(mp["APC"]["LLE_percent"]), device)
        mouth = MouthPredictor(a2f, int(a2f_meta.get("frame_future", mp["Audio2Mouth"]["frame_future"])),
                               assets, mp["Audio2Mouth"], device)
        pose = HeadPosePredictor(a2h, int(a2h_meta.get("frame_future", mp["Headpose"]["frame_future"])),
                                 assets, mp["Headpose"], device)
        renderer = FaceRenderer(netg, assets, device, backend, onnx_renderer_path(cfg))
        return cls(cfg, assets, encoder, mouth, pose, renderer, fps)

    def check_audio(self, audio: np.ndarray, name: str) -> int:
        """Number of video frames of `audio`; an InputError when it is shorter than the lookahead."""
        n = self.encoder.mel.cfg.num_video_frames(len(audio))
        if n < self.min_frames:
            raise InputError(f"driving audio {name}: {len(audio) / self.sample_rate:.2f} s is too short; need at least "
                             f"{self.min_frames / self.fps:.2f} s ({self.min_frames} frames at {self.fps:g} fps, "
                             f"the models' lookahead + 1)")
        return n

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
        """The audio side over a whole clip, in memory: the streams fed in OFFLINE_CHUNK pieces, so the
        result equals a live session's. `keep_features` adds the APC features (2N, d) to the extras."""
        n = self.check_audio(audio, name)
        stream = AudioSideStream(self, seed, sigma_scale, poses, keep_features)
        cat = FrameBatch.concat(list(self.frame_batches(stream, audio)))
        assert len(cat) == n, (len(cat), n)
        extras = {"headpose_samples": cat.raw_pose} if poses is None else {}
        if keep_features:
            extras["apc_features"] = np.concatenate(stream.kept_features)[: 2 * n]
        return Prediction(n, self.fps, cat.face3d, cat.rotation, cat.translation, cat.face2d, cat.shoulders2d, extras)

    def render(self, pred: Prediction, batch_size: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (RGB frame (H, W, 3), feature map (H, W)) for every frame of `pred`."""
        for start in range(0, pred.n_frames, batch_size):
            sl = slice(start, start + batch_size)
            maps = self.renderer.feature_maps(pred.face2d[sl], pred.shoulders2d[sl])
            yield from zip(self.renderer(maps), maps)

    def generate(self, audio: np.ndarray, out_dir: Path, name: str, seed: int = 0, sigma_scale: float | None = None,
                 poses: tuple[np.ndarray, np.ndarray] | None = None, batch_size: int = 1,
                 save_intermediates: bool = False, overlap: bool | None = None) -> dict[str, Path]:
        """Audio to <name>.mp4 (with audio), <name>_feature_maps.mp4 and <name>.npz, in flat memory.

        The audio side runs in OFFLINE_CHUNK pieces and the per-frame arrays are recorded to disk as
        they come (util/recorder.py). With `overlap` (default: on CUDA) three stages run at once
        (util/stages.py): the audio side and feature-map drawing in a producer thread, the renderer
        here, encoding and file writing in a consumer thread, with bounded queues between them. On a
        CPU the stages share the same cores and torch's thread pool, and overlapping them was measured
        25% slower on 2 cores than running them in turn (x264 already encodes in its own process).
        """
        from tqdm import tqdm

        from util.recorder import ArrayRecorder
        from util.stages import Sink, background

        n = self.check_audio(audio, name)
        out_dir.mkdir(parents=True, exist_ok=True)
        stream = AudioSideStream(self, seed, sigma_scale, poses, save_intermediates)
        paths = {"video": out_dir / f"{name}.mp4", "landmarks": out_dir / f"{name}.npz"}
        save_input = bool(self.cfg["model_params"]["Image2Image"].get("save_input", 1))
        if save_input:
            paths["feature_maps"] = out_dir / f"{name}_feature_maps.mp4"
        recorder = ArrayRecorder(paths["landmarks"])
        outputs = _Outputs(self, paths, audio[: round(n / self.fps * self.sample_rate)],
                           out_dir / "frames" if save_intermediates else None)

        def maps() -> Iterator[np.ndarray]:
            for batch in self.frame_batches(stream, audio):
                recorder.add(landmarks3d=batch.face3d, rotation=batch.rotation, translation=batch.translation,
                             landmarks2d=batch.face2d, shoulders2d=batch.shoulders2d)
                if save_intermediates and poses is None:
                    recorder.add(headpose_samples=batch.raw_pose)
                for i in range(0, len(batch), batch_size):
                    yield self.renderer.feature_maps(batch.face2d[i : i + batch_size],
                                                     batch.shoulders2d[i : i + batch_size])

        overlap = self.renderer.device.type == "cuda" if overlap is None else overlap
        depth = max(2, QUEUED_FRAMES // batch_size)
        sink = Sink(outputs.write, depth, name="encode") if overlap else _Inline(outputs.write)
        try:
            with tqdm(total=n, desc="render", unit="frame") as bar:
                for fmaps in background(maps(), depth, name="audio side") if overlap else maps():
                    sink.put((self.renderer(fmaps), fmaps))
                    bar.update(len(fmaps))
            sink.close()
            outputs.close()
            extras = {}
            if save_intermediates:
                extras["apc_features"] = np.concatenate(stream.kept_features)[: 2 * n]
            recorder.close(fps=np.float64(self.fps), **extras)
        except BaseException:
            sink.abort()
            outputs.abort()
            recorder.abort()
            raise
        return paths


class _Inline:
    """A Sink that works in the caller's thread."""

    def __init__(self, fn: Callable[[Any], None]) -> None:
        self.put, self.close, self.abort = fn, lambda: None, lambda: None


class _Outputs:
    """The files a demo run writes per frame: the videos and, with --save_intermediates, PNGs."""

    def __init__(self, pipe: PortraitPipeline, paths: dict[str, Path], audio: np.ndarray,
                 frames_dir: Path | None) -> None:
        from util.video import VideoWriter

        self.frames_dir, self.count = frames_dir, 0
        if frames_dir is not None:
            frames_dir.mkdir(exist_ok=True)
        size, rate = pipe.assets.image_size, pipe.sample_rate
        self.writers = [VideoWriter(paths["video"], pipe.fps, size, audio, rate)]
        if "feature_maps" in paths:
            self.writers.append(VideoWriter(paths["feature_maps"], pipe.fps, size, audio, rate, gray=True))

    def write(self, item: tuple[np.ndarray, np.ndarray]) -> None:
        frames, fmaps = item
        for frame, fmap in zip(frames, fmaps):
            self.writers[0].write(frame)
            if len(self.writers) > 1:
                self.writers[1].write(fmap)
            self.count += 1
            if self.frames_dir is not None:
                _save_png(self.frames_dir / f"pred_{self.count:05d}.png", frame)
                _save_png(self.frames_dir / f"input_{self.count:05d}.png", fmap)

    def close(self) -> None:
        for w in self.writers:
            w.close()

    def abort(self) -> None:
        for w in self.writers:
            w.abort()


def _save_png(path: Path, image: np.ndarray) -> None:
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)


def load_pose_file(path: Path, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Explicit head poses: rotation (N, 3) degrees and translation (N, 3), looped back and forth to N.

    Accepts .npy/.txt/.csv with rows [rot x, y, z, trans x, y, z] or an .npz with `rot_angles` (T, 3)
    and `trans` (T, 3[, 1]) such as an identity's 3d_fit_data.npz.
    """
    from util.errors import require_file

    require_file(path, "--pose_file")
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                if "rot_angles" not in data or "trans" not in data:
                    raise InputError(f"--pose_file {path}: an .npz needs arrays rot_angles and trans, has {data.files}")
                poses = np.concatenate([data["rot_angles"].reshape(-1, 3), data["trans"].reshape(-1, 3)], 1)
        elif path.suffix == ".npy":
            poses = np.load(path)
        else:
            poses = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
    except ValueError as err:
        raise InputError(f"--pose_file {path}: cannot be read as numbers ({err})") from err
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != 6 or len(poses) == 0 or not np.all(np.isfinite(poses)):
        raise InputError(f"--pose_file {path}: expected finite N x 6 rows [rot x y z, trans x y z], "
                         f"got shape {poses.shape}")
    period = max(1, 2 * len(poses) - 2)
    idx = np.arange(n_frames) % period
    idx = np.where(idx < len(poses), idx, period - idx)  # ping-pong: no jump when the sequence wraps
    return poses[idx, :3], poses[idx, 3:]
