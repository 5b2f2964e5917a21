"""The inference runtime, split by concern:

    pipeline.py     PortraitPipeline: an identity loaded once; offline predict() and generate()
    settings.py     the identity's typed inference settings (from its config and checkpoints)
    streams.py      the audio side as streams: features, mouth, head pose, projection
    session.py      StreamingSession: a live session with frame skipping, and its latency
    renderer.py     FaceRenderer: feature maps -> frames (torch, torch.compile, onnxruntime)
    offline.py      offline output in flat memory, optionally in overlapped stages
    postprocess.py, smoothing.py, manifold.py: mouth post-processing, streaming smoothers, LLE projection
"""

from models.runtime.pipeline import PortraitPipeline, Prediction
from models.runtime.session import RenderedFrame, StreamingSession, StreamStats, paced_chunks, run_live

__all__ = ["PortraitPipeline", "Prediction", "RenderedFrame", "StreamStats", "StreamingSession", "paced_chunks",
           "run_live"]
