"""Drive a trained identity with any speech: python demo.py --id May --driving_audio speech.wav

Writes results/<id>/<audio name>/<audio name>.mp4 (H.264 + AAC at the model fps), the feature-map
video beside it, and <audio name>.npz with the predicted landmarks, head poses and shoulders.
Live: --stream (the file paced as if it arrived in real time, latency printed) or --mic.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from models.runtime import PortraitPipeline

OFFLINE_CUDA_BATCH = 8  # default frames per renderer call offline on a GPU


def main(opt: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> dict:
    """Run the demo for parsed options; returns the paths written (and live statistics)."""
    from datasets.identity import check_identity_name
    from models.runtime import PortraitPipeline
    from models.runtime.postprocess import load_pose_file
    from options.common import save_options
    from util.audio import load_audio
    from util.io import prepare_output_dir

    name = "mic" if opt.mic else opt.driving_audio.stem
    out_dir = prepare_output_dir(opt.results_dir / check_identity_name(opt.id) / name, "--results_dir", opt.overwrite)
    pipeline = PortraitPipeline.from_identity(opt.id, opt.device, opt.config_dir, opt.backend)
    if opt.mic:
        paths = live(pipeline, opt, out_dir, name, record_mic(pipeline.sample_rate, opt.mic_seconds))
    else:
        audio = load_audio(opt.driving_audio, pipeline.sample_rate, what="--driving_audio")
        n_frames = pipeline.check_audio(audio, str(opt.driving_audio))
        poses = load_pose_file(opt.pose_file, n_frames) if opt.pose_file is not None else None
        if opt.stream:
            paths = live(pipeline, opt, out_dir, name, audio, poses)
        else:
            overlap = {"auto": None, "on": True, "off": False}[opt.overlap]
            batch = opt.batch_size or (OFFLINE_CUDA_BATCH if pipeline.renderer.device.type == "cuda" else 1)
            paths = pipeline.generate(audio, out_dir, name, opt.seed, opt.sigma_scale, poses, batch,
                                      opt.save_intermediates, overlap)
    if parser is not None:
        save_options(opt, parser, out_dir, "demo")
    return paths


def live(pipeline: PortraitPipeline, opt: argparse.Namespace, out_dir: Path, name: str,
         audio: np.ndarray | Iterator[np.ndarray], poses: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Stream `audio` (an array, paced as if live, or an iterator of microphone chunks) into a video."""
    import numpy as np

    from models.runtime import StreamingSession, paced_chunks, run_live
    from util.video import VideoWriter, mux_audio

    session = StreamingSession(pipeline, opt.seed, opt.sigma_scale, opt.batch_size or 1, opt.frame_step, poses,
                               opt.hop_ms, max_lag_ms=opt.max_lag_ms or None)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = out_dir / f"{name}.mp4"
    recorded: list[np.ndarray] = []
    if isinstance(audio, np.ndarray):
        chunks = paced_chunks(audio, opt.chunk_ms / 1000, pipeline.sample_rate)
    else:
        chunks = (recorded.append(c) or c for c in audio)  # keep the microphone's audio for the video
    writer = VideoWriter(video, pipeline.fps / opt.frame_step, pipeline.assets.image_size,
                         audio if isinstance(audio, np.ndarray) else None, pipeline.sample_rate)
    try:
        stats = run_live(session, chunks, pipeline.sample_rate, on_frame=lambda f: writer.write(f.rgb))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    if recorded:
        mux_audio(video, np.concatenate(recorded), pipeline.sample_rate)
    summary = {k: round(v, 2) for k, v in stats.summary().items()}
    print(f"live: {stats.frames} frames, latency p50 {summary['stream_latency_ms_p50']} ms, p95 "
          f"{summary['stream_latency_ms_p95']} ms, {summary['stream_fps']} frames/s, real-time factor "
          f"{summary['real_time_factor']}, {stats.dropped} frames skipped to stay live")
    return {"video": video, **summary}


def record_mic(sample_rate: int, seconds: float) -> Iterator[np.ndarray]:
    """Chunks from the default input device (sounddevice / PortAudio), until Ctrl-C or `seconds`."""
    from util.errors import InputError

    try:
        import sounddevice as sd

        sd.check_input_settings(samplerate=sample_rate, channels=1)
    except Exception as err:  # no PortAudio, no device, or an unsupported rate
        raise InputError(f"--mic: no usable sound input device ({type(err).__name__}: {err})") from err

    def chunks():
        block = int(sample_rate * 0.02)
        got = 0
        with sd.InputStream(samplerate=sample_rate, channels=1, dtype="float32", blocksize=block) as stream:
            try:
                while seconds <= 0 or got < seconds * sample_rate:
                    data, _ = stream.read(block)
                    got += len(data)
                    yield data[:, 0].copy()
            except KeyboardInterrupt:
                return

    return chunks()


def cli(args: list[str] | None = None) -> int:
    """Parse the command line, run, and turn bad input into a one-line error (exit status 2)."""
    from options.demo_options import DemoOptions
    from util.errors import run_cli
    from util.log import get_logger

    logger = get_logger()
    options = DemoOptions()
    opt = options.parse(args)
    logger.setLevel(10 if opt.verbose else 20)

    def work() -> None:
        for kind, path in main(opt, options.parser).items():
            print(f"{kind}: {path}")

    return run_cli("demo.py", work)


if __name__ == "__main__":
    sys.exit(cli())
