"""Export an identity's renderer to ONNX for CPU inference with onnxruntime:

    python scripts/export_onnx.py --id Alice          # then: python demo.py --id Alice ... --backend onnx

Writes the file config Image2Image.onnx_path names (default: the renderer checkpoint with .onnx), and
checks that onnxruntime reproduces torch on a real feature map.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.runtime import PortraitPipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OPSET = 17
TOLERANCE = 1e-3  # max abs difference in [-1, 1] output units


def export_renderer(pipe: PortraitPipeline, path: Path) -> float:
    """Trace the renderer to ONNX (dynamic batch) and return the largest difference from torch."""
    import copy
    import warnings

    import numpy as np
    import onnxruntime as ort
    import torch

    from util.io import atomic_write

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


def main(argv: list[str] | None = None) -> int:
    from util.argtypes import ArgumentParser

    p = ArgumentParser(prog="export_onnx.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", type=str, required=True, help="identity whose renderer to export")
    p.add_argument("--config_dir", type=Path, default=None, help="folder of <id>.yaml files")
    p.add_argument("--out", type=Path, default=None, help="output file (default: from the config)")
    args = p.parse_args(argv)
    from models.runtime import PortraitPipeline
    from models.runtime.renderer import onnx_renderer_path
    from util.errors import run_cli

    def work() -> None:
        pipe = PortraitPipeline.from_identity(args.id, "cpu", args.config_dir)
        out = args.out or onnx_renderer_path(pipe.cfg)
        diff = export_renderer(pipe, out)
        if diff > TOLERANCE:
            raise ExportError(f"onnxruntime differs from torch by {diff:.2e} (> {TOLERANCE})")
        print(f"wrote {out} (onnxruntime vs torch: max difference {diff:.1e})")

    return run_cli("export_onnx.py", work, {ExportError: 1})


class ExportError(RuntimeError):
    """The exported renderer does not reproduce torch."""


if __name__ == "__main__":
    sys.exit(main())
