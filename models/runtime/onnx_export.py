"""The renderer as an ONNX file for onnxruntime on a CPU: float32, and int8 for live serving on few cores.

float32 (`export_renderer`) reproduces torch to within 1e-3. int8 (`quantize_renderer`) is the float32 file
statically quantized (per-channel int8 weights, uint8 activations, QDQ format) with activation ranges
calibrated on feature maps the identity's own audio side draws for real speech, so the ranges are the ones
the live renderer meets. Measured for the example's 256² renderer on the 2-core CPU (one thread, the live
server's setting): 12 ms per frame against 29 ms for float32 (both in the generator's inference form), and a
held-out PSNR against the real frames of 24.45 dB against 24.47 dB. Each int8 file is checked against float32 on
the calibration maps before it is kept (`MIN_INT8_PSNR`).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.evaluation.metrics import psnr
from models.runtime.renderer import onnx_pixels
from util.errors import InputError
from util.io import atomic_write

if TYPE_CHECKING:
    from models.runtime.pipeline import PortraitPipeline

log = logging.getLogger("lsp")
OPSET = 17
CALIBRATION_SECONDS = 8.0  # of bundled speech the audio side turns into calibration feature maps
CALIBRATION_MAPS = 96  # feature maps calibrated on (evenly spaced over those seconds)
MIN_INT8_PSNR = 30.0  # dB of the int8 renderer's frames against float32's, on the calibration maps


class ExportError(RuntimeError):
    """An exported renderer does not reproduce the torch (or float32) one."""


def export_renderer(pipe: PortraitPipeline, path: Path) -> float:
    """Trace the renderer to ONNX at `path` (dynamic batch); returns its largest difference from torch."""
    import onnxruntime as ort

    net = copy.deepcopy(pipe.renderer.net).float().cpu().eval()  # a copy: the live renderer stays where it is
    h, w = pipe.assets.image_size
    x = torch.randn(1, net.cfg.input_nc, h, w)
    with atomic_write(path) as tmp, warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = net(x).numpy()
    return float(np.abs(session.run(None, {"input": x.numpy()})[0] - ref).max())


def calibration_maps(pipe: PortraitPipeline, audio: np.ndarray, count: int = CALIBRATION_MAPS) -> np.ndarray:
    """(count, H, W) uint8 feature maps the identity's audio side draws for `audio`, evenly spaced."""
    pred = pipe.predict(audio, "calibration speech")
    idx = np.unique(np.linspace(0, pred.n_frames - 1, min(count, pred.n_frames)).round().astype(int))
    return pipe.renderer.feature_maps(pred.face2d[idx], pred.shoulders2d[idx])


def _images(session: object, x: np.ndarray) -> np.ndarray:
    return onnx_pixels(np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))]))


def quantize_renderer(fp32_path: Path, out_path: Path, inputs: np.ndarray) -> float:
    """Quantize the float32 renderer file to int8 at `out_path`, calibrated on `inputs` (B, C, H, W).

    Returns the PSNR (dB) of its frames against float32's on those inputs. Where the CPU's int8 kernels
    saturate (x86 without VNNI, a documented onnxruntime caveat), 7-bit ranges (`reduce_range`) are tried
    too and the better file is kept; below MIN_INT8_PSNR it is an ExportError and nothing is written.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": inputs[i : i + 1]} for i in range(len(inputs))])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    if not len(inputs):
        raise InputError("int8 renderer: no calibration feature maps")
    reference = _images(ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]), inputs)
    best: tuple[float, Path] | None = None
    with tempfile.TemporaryDirectory(prefix="lsp_int8_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        for reduce_range in (False, True):
            candidate = Path(tmp) / f"int8_{int(reduce_range)}.onnx"
            quantize_static(str(prepared), str(candidate), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
            session = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
            score = psnr(_images(session, inputs), reference)
            log.info("int8 renderer%s: %.1f dB against float32", " (7-bit ranges)" if reduce_range else "", score)
            if best is None or score > best[0]:
                best = (score, candidate)
            if score >= MIN_INT8_PSNR:
                break
        score, candidate = best
        if score < MIN_INT8_PSNR:
            raise ExportError(f"the int8 renderer's frames differ from float32's ({score:.1f} dB < "
                              f"{MIN_INT8_PSNR:g} dB); use --backend onnx")
        with atomic_write(out_path) as dst:
            Path(dst).write_bytes(candidate.read_bytes())
    return score


def export_int8(pipe: PortraitPipeline, fp32_path: Path, out_path: Path,
                speech: Path | None = None) -> tuple[float, int]:
    """The int8 renderer of `pipe` at `out_path`, from its float32 file, calibrated on the feature maps its
    audio side draws for CALIBRATION_SECONDS of `speech` (a file or folder; default: the bundled speech).
    Returns (PSNR against float32 in dB, number of calibration maps)."""
    from models.runtime.motion import BUNDLED_SPEECH, speech_files

    audio = np.concatenate(speech_files(speech or BUNDLED_SPEECH, CALIBRATION_SECONDS, "--calibration_speech"))
    maps = calibration_maps(pipe, audio[: int(CALIBRATION_SECONDS * pipe.sample_rate)])
    return quantize_renderer(fp32_path, out_path, pipe.renderer.onnx_inputs(maps)), len(maps)
