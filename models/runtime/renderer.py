"""The renderer: 2D landmarks and shoulders -> feature maps -> RGB frames with Feature2Face (LSP §1.10-§1.11),
on one of four backends (torch eager, torch.compile, onnxruntime float32 or int8)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from datasets.identity import IdentityAssets, config_path
from models.networks import Feature2FaceG
from util.errors import InputError, require_file
from util.landmarks import feature_map

log = logging.getLogger("lsp")
ONNX_FILES = {"onnx": ("onnx_path", ".onnx"), "onnx_int8": ("onnx_int8_path", ".int8.onnx")}  # config key, suffix
BACKENDS = ("torch", "compile", *ONNX_FILES)


def onnx_renderer_path(cfg: dict, backend: str = "onnx") -> Path:
    """The ONNX renderer file of an onnx backend: config Image2Image.onnx_path (onnx_int8_path), or the
    renderer checkpoint's path with the suffix .onnx (.int8.onnx)."""
    key, suffix = ONNX_FILES[backend]
    if cfg["model_params"]["Image2Image"].get(key):
        return config_path(cfg, ("model_params", "Image2Image", key))
    return config_path(cfg, ("model_params", "Image2Image", "ckp_path")).with_suffix(suffix)


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


class FaceRenderer:
    """2D landmarks and shoulders -> feature maps -> RGB frames with Feature2Face.

    Backends: torch (eager; on CUDA with channels-last memory and fp16/bf16 autocast), compile (the
    same through torch.compile; on CUDA with CUDA graphs; the first call of each batch size compiles,
    which takes a while), onnx or onnx_int8 (onnxruntime on the CPU, from the files
    scripts/export_onnx.py [--int8] writes).
    """

    def __init__(self, net: Feature2FaceG, assets: IdentityAssets, device: torch.device, backend: str = "torch",
                 onnx_path: Path | None = None, half: bool = True, onnx_threads: int | None = None) -> None:
        """`onnx_threads`: onnxruntime threads, sleeping when idle (None: its default, a spinning thread per
        core, fastest on a machine that does nothing else)."""
        # the inference form of the generator (SubPixelConv for every upsample + conv: the same frames, faster)
        self.net, self.size, self.device = net.for_inference().to(device), assets.image_size, device
        cand = torch.from_numpy(assets.candidates).permute(0, 3, 1, 2).float() / 255 * 2 - 1  # (4, 3, H, W)
        self.candidates = cand.reshape(1, -1, *self.size).to(device)  # (1, 12, H, W) in [-1, 1]
        if self.net.cfg.input_nc != 1 + self.candidates.shape[1]:
            raise InputError(f"Feature2Face expects {self.net.cfg.input_nc} input channels, but a feature map "
                             f"and 4 candidates make {1 + self.candidates.shape[1]}")
        self.autocast = half and device.type == "cuda"
        if device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.session, self._candidates_np = None, None
        if backend not in BACKENDS:
            raise InputError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
        if backend == "compile":
            self.net = compile_renderer(self.net, device)
        elif backend in ONNX_FILES:
            self.session = onnx_session(onnx_path, backend, onnx_threads)

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

    def onnx_inputs(self, maps: np.ndarray) -> np.ndarray:
        """(B, H, W) uint8 feature maps -> (B, 1 + 12, H, W) float32 inputs of the ONNX renderer."""
        # NumPy only around onnxruntime: torch ops here would leave torch's OpenMP threads spinning on
        # the cores onnxruntime's own threads need (measured: a third slower per frame on 2 cores).
        if self._candidates_np is None:
            self._candidates_np = self.candidates.cpu().numpy()
        x = np.empty((len(maps), 1 + self._candidates_np.shape[1], *maps.shape[1:]), np.float32)
        np.multiply(maps[:, None], np.float32(1 / 255), out=x[:, :1], casting="unsafe")
        x[:, 1:] = self._candidates_np
        return x

    def _run_onnx(self, maps: np.ndarray) -> np.ndarray:
        img = onnx_pixels(self.session.run(None, {"input": self.onnx_inputs(maps)})[0])
        return np.ascontiguousarray(img.transpose(0, 2, 3, 1))


def onnx_pixels(out: np.ndarray) -> np.ndarray:
    """The ONNX renderer's output (B, 3, H, W) in [-1, 1] -> uint8 pixels, same shape."""
    return np.clip(np.rint((out + 1) * 127.5), 0, 255).astype(np.uint8)


def compile_renderer(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile for the renderer: CUDA graphs on a GPU (mode reduce-overhead), inductor on a CPU
    (measured 1.06x eager for the example's 256² renderer on 2 cores, both in the inference form; ONNX is faster
    there)."""
    log.info("renderer: torch.compile; the first frames of each batch size wait for the compiler")
    return torch.compile(net, mode="reduce-overhead" if device.type == "cuda" else "default")


def onnx_session(path: Path | None, backend: str = "onnx", threads: int | None = None):  # noqa: ANN201 - an onnxruntime.InferenceSession
    """An onnxruntime CPU session for the renderer file `path` (scripts/export_onnx.py writes it); `threads`
    intra-op threads that sleep between calls (None: onnxruntime's default)."""
    if path is None:
        raise InputError(f"--backend {backend}: no ONNX renderer path (config Image2Image.{ONNX_FILES[backend][0]})")
    flag = " --int8" if backend == "onnx_int8" else ""
    require_file(path, f"ONNX renderer for --backend {backend} (make it with: python scripts/export_onnx.py "
                       f"--id <id>{flag})")
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise InputError("--backend onnx needs onnxruntime: pip install -r requirements.txt") from err
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


