"""Export an identity's renderer to ONNX for CPU inference with onnxruntime:

    python scripts/export_onnx.py --id Alice          # then: python demo.py --id Alice ... --backend onnx
    python scripts/export_onnx.py --id Alice --int8   # also int8, for --backend onnx_int8 (live on few cores)

Writes the file config Image2Image.onnx_path names (default: the renderer checkpoint with .onnx) and checks
that onnxruntime reproduces torch on it. --int8 also writes Image2Image.onnx_int8_path (default:
.int8.onnx), calibrated on feature maps the identity's audio side draws for --calibration_speech and
checked against the float32 file (models/runtime/onnx_export.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOLERANCE = 1e-3  # max abs difference in [-1, 1] output units


def main(argv: list[str] | None = None) -> int:
    from util.argtypes import ArgumentParser

    p = ArgumentParser(prog="export_onnx.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", type=str, required=True, help="identity whose renderer to export")
    p.add_argument("--config_dir", type=Path, default=None, help="folder of <id>.yaml files")
    p.add_argument("--out", type=Path, default=None, help="float32 output file (default: from the config)")
    p.add_argument("--int8", action="store_true", help="also write the int8 renderer (--backend onnx_int8)")
    p.add_argument("--calibration_speech", type=Path, default=None,
                   help="--int8: speech (a file or a folder) whose feature maps calibrate the int8 ranges "
                        "(default: the bundled data/example_src/speech)")
    args = p.parse_args(argv)
    from models.runtime import PortraitPipeline
    from models.runtime.onnx_export import ExportError, export_int8, export_renderer
    from models.runtime.renderer import ONNX_FILES, onnx_renderer_path
    from util.errors import run_cli

    def work() -> None:
        pipe = PortraitPipeline.from_identity(args.id, "cpu", args.config_dir)
        out = args.out or onnx_renderer_path(pipe.cfg)
        diff = export_renderer(pipe, out)
        if diff > TOLERANCE:
            raise ExportError(f"onnxruntime differs from torch by {diff:.2e} (> {TOLERANCE})")
        print(f"wrote {out} (onnxruntime vs torch: max difference {diff:.1e})")
        if args.int8:
            int8 = (out.with_suffix(ONNX_FILES["onnx_int8"][1]) if args.out
                    else onnx_renderer_path(pipe.cfg, "onnx_int8"))
            score, n = export_int8(pipe, out, int8, args.calibration_speech)
            print(f"wrote {int8} (int8 vs float32 on {n} calibration frames: {score:.1f} dB PSNR)")

    return run_cli("export_onnx.py", work, {ExportError: 1})


if __name__ == "__main__":
    sys.exit(main())
