"""Speed of the inference pipeline, stage by stage: ms/frame and frames/s.

    python scripts/benchmark.py                                  # random weights, normal G at 512^2
    python scripts/benchmark.py --id May --json bench.json       # a real identity
    python scripts/benchmark.py --g_size large --image_size 512 --device cuda
    python scripts/benchmark.py --serve --id May --audio speech.wav --stream_seconds 60 --json s.json  # live server

Also times, in the same run, the original algorithm's costly choices (a Python loop of one STFT per
mel frame; the full 255-frame WaveNet recomputed for every pose) as `reference_*`. Medians of
--repeats runs after one warm-up. JSON: {"stages": {name: {"ms_per_frame": x}}, "audio_side_fps",
"render_fps", "reference_audio_side_fps", ...}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from models.runtime import PortraitPipeline
    from models.runtime.renderer import FaceRenderer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_AUDIO = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "speech_3s.wav"
AUDIO_SIDE = ("mel", "apc", "manifold", "audio2feature", "audio2headpose", "projection")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from models.runtime.renderer import BACKENDS
    from util.argtypes import ArgumentParser, non_negative_float, positive_float, positive_int

    p = ArgumentParser(prog="benchmark.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", type=str, default=None, help="benchmark this identity (default: random weights)")
    p.add_argument("--config_dir", type=Path, default=None, help="folder of <id>.yaml files")
    p.add_argument("--g_size", type=str, default="normal", choices=("large", "normal", "small"),
                   help="random weights: generator variant")
    p.add_argument("--image_size", type=positive_int, default=512, help="random weights: crop side")
    p.add_argument("--ngf", type=positive_int, default=64, help="random weights: generator width")
    p.add_argument("--num_downs", type=positive_int, default=8, help="random weights: U-Net levels")
    p.add_argument("--database_frames", type=positive_int, default=36000,
                   help="random weights: APC feature database rows (36000 = 5 min of speech at 120 Hz)")
    p.add_argument("--audio", type=Path, default=None, help="driving audio (default: the bundled clip, looped)")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="audio length to process")
    p.add_argument("--render_frames", type=positive_int, default=8, help="frames to time the renderer on")
    p.add_argument("--batch_size", type=positive_int, default=1, help="frames per renderer call")
    p.add_argument("--reference_frames", type=positive_int, default=120,
                   help="frames to time the original full-recompute head-pose generation on")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per stage (median reported)")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--device", type=str, default="cpu", help="cpu or cuda")
    p.add_argument("--onnx", action="store_true", help="also time the renderer exported to onnxruntime")
    p.add_argument("--compile", action="store_true", help="also time the renderer through torch.compile")
    p.add_argument("--offline_seconds", type=non_negative_float, default=1.0,
                   help="time a whole offline run (audio side, render, H.264 encode) on this much audio: offline_fps")
    p.add_argument("--stream_seconds", type=non_negative_float, default=0.0,
                   help="also run a live session on this much audio, paced in real time (latency, stream fps)")
    p.add_argument("--chunk_ms", type=positive_float, default=20.0, help="live session: audio chunk length")
    p.add_argument("--frame_step", type=positive_int, default=1, help="live session: render every n-th frame")
    p.add_argument("--hop_ms", type=non_negative_float, default=None,
                   help="live session: audio-side cadence (default 50 ms; --serve: the server's, 20 ms)")
    p.add_argument("--max_lag_ms", type=non_negative_float, default=None,
                   help="live session: skip frames later than this to stay live (0 = render every frame; "
                        "default 0; --serve: the server's, 150 ms)")
    p.add_argument("--stream_backend", type=str, default="torch", choices=BACKENDS,
                   help="live session: renderer backend (onnx, onnx_int8: exported to a temporary file)")
    p.add_argument("--serve", action="store_true",
                   help="only the live server, driven by headless Chromium with --audio as its microphone for "
                        "--stream_seconds (with --id; --stream_backend, --frame_step, --max_lag_ms, --hop_ms apply)")
    p.add_argument("--serve_sessions", type=positive_int, default=1, help="--serve: concurrent browser sessions")
    p.add_argument("--serve_screenshot", type=Path, default=None, help="--serve: save a screenshot of the page here")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall seconds of `fn` over `repeats` runs after one warm-up."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_pipeline(args: argparse.Namespace, workdir: Path) -> PortraitPipeline:
    """A pipeline with random weights at the requested sizes over a synthetic identity."""
    import torch

    from datasets.identity import CONFIG_DIR, IdentityAssets
    from models.networks import APC, Audio2FeatureNet, Audio2HeadposeNet, Feature2FaceG, Feature2FaceGConfig
    from models.runtime import PortraitPipeline
    from models.runtime.renderer import resolve_device
    from models.synthetic import write_assets
    from util.io import read_yaml

    torch.manual_seed(0)
    write_assets(workdir / "data" / "bench", args.image_size, n_frames=300, apc_frames=args.database_frames)
    cfg = read_yaml(CONFIG_DIR / "default.yaml")
    cfg["_root"], cfg["_path"] = str(workdir), "(random weights)"
    cfg["dataset_params"] = {k: v.replace("{id}", "bench") for k, v in cfg["dataset_params"].items()}
    assets = IdentityAssets.load(cfg)
    netg = Feature2FaceG(Feature2FaceGConfig(size=args.g_size, ngf=args.ngf, num_downs=args.num_downs))
    nets = [m.eval() for m in (APC(), Audio2FeatureNet(), Audio2HeadposeNet(), netg)]
    return PortraitPipeline.build(cfg, assets, *nets, resolve_device(args.device))


def run(args: argparse.Namespace, pipe: PortraitPipeline, clip: np.ndarray, workdir: Path) -> dict:
    """Time every stage on the same audio (`clip` looped to --seconds); returns the JSON-ready results."""
    import numpy as np
    import torch

    from models.networks.audio2headpose import generate_headpose_full
    from models.runtime.manifold import project_to_manifold
    from models.runtime.streams import MouthStream, PairBuffer, PoseStream
    from util.audio import log_mel_framewise
    from util.geometry import project, project_landmarks, shoulder_points

    audio = np.resize(clip, int(args.seconds * pipe.sample_rate))
    n = pipe.check_audio(audio, str(args.audio or DEFAULT_AUDIO))
    side = pipe.audio_side
    enc, dev, st = side.encoder, side.device, pipe.settings
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    mel = enc.mel(audio)
    mel_t = torch.from_numpy(mel).to(dev)[None]
    with torch.no_grad():
        raw = enc.apc(mel_t)[0][0].cpu()
    knear, blend = st.encoder.knear, st.encoder.blend
    apc = project_to_manifold(raw, enc.database, knear, blend) if enc.database is not None else raw
    pairs_all = apc.reshape(n, -1)

    def mouth() -> np.ndarray:
        buf, stream = PairBuffer(), MouthStream(side.mouth_net, st.mouth, side.assets, dev)
        out = [stream.push(buf.push(apc)).face3d]
        return np.concatenate([*out, stream.finish(buf, n).face3d])

    def pose() -> tuple[np.ndarray, np.ndarray]:
        buf, stream = PairBuffer(), PoseStream(side.pose_net, st.pose, side.assets.mean_trans, 0, 0.3, dev)
        a_out, b_out = stream.push(buf.push(apc)), None
        b_out = stream.finish(buf.padding(1), n)
        return np.concatenate([a_out[0], b_out[0]]), np.concatenate([a_out[1], b_out[1]])

    face3d = mouth()
    rot, trans = pose()
    a = pipe.assets
    timings: dict[str, tuple[float, int]] = {}

    def stage(name: str, fn: Callable[[], object], frames: int) -> None:
        timings[name] = (median_time(fn, args.repeats, sync), frames)

    stage("mel", lambda: enc.mel(audio), n)
    stage("apc", lambda: torch.no_grad()(enc.apc)(mel_t), n)
    if enc.database is not None:
        stage("manifold", lambda: project_to_manifold(raw, enc.database, knear, blend), n)
    stage("audio2feature", mouth, n)
    stage("audio2headpose", pose, n)
    stage("projection", lambda: (project_landmarks(face3d, rot, trans, a.scale, a.intrinsic),
                                 project(shoulder_points(a.shoulders3d, a.ref_trans, trans, 0.5), a.intrinsic)), n)
    m = min(args.reference_frames, n)
    ff = st.pose.frame_future
    pairs = pairs_all[: m + ff].to(dev)
    noise, uni = torch.randn(m, side.pose_net.cfg.ndim, device=dev), torch.rand(m, device=dev)

    def reference_pose() -> None:
        generate_headpose_full(side.pose_net, pairs, m, ff, noise, uni, 0.3)

    stage("reference_mel", lambda: log_mel_framewise(audio, enc.mel.cfg), n)
    stage("reference_audio2headpose", reference_pose, m)
    r = min(args.render_frames, n)
    face2d = project_landmarks(face3d[:r], rot[:r], trans[:r], a.scale, a.intrinsic)
    sh2d = project(shoulder_points(a.shoulders3d, a.ref_trans, trans[:r], 0.5), a.intrinsic)
    maps = pipe.renderer.feature_maps(face2d, sh2d)
    stage("feature_map", lambda: pipe.renderer.feature_maps(face2d, sh2d), r)
    stage("render", lambda: [pipe.renderer(maps[i : i + args.batch_size]) for i in range(0, r, args.batch_size)], r)
    if args.onnx:
        for backend in ("onnx", "onnx_int8"):
            onnx_renderer = onnx_copy(pipe, workdir, backend)
            stage(f"render_{backend}", lambda run=onnx_renderer: [run(maps[i : i + args.batch_size])
                                                                  for i in range(0, r, args.batch_size)], r)

    if args.compile:
        compiled = compiled_copy(pipe)
        stage("render_compiled", lambda: [compiled(maps[i : i + args.batch_size])
                                          for i in range(0, r, args.batch_size)], r)

    ms = {k: 1000 * t / f for k, (t, f) in timings.items()}
    ours = sum(ms[k] for k in AUDIO_SIDE if k in ms)
    reference = ours - ms["mel"] - ms["audio2headpose"] + ms["reference_mel"] + ms["reference_audio2headpose"]
    return {
        "stages": {k: {"ms_per_frame": round(v, 4), "frames": timings[k][1]} for k, v in ms.items()},
        "audio_side_fps": round(1000 / ours, 1),
        "reference_audio_side_fps": round(1000 / reference, 1),
        "audio_side_speedup": round(reference / ours, 2),
        "render_fps": round(1000 / (ms["feature_map"] + ms["render"]), 3),
        "offline_fps_from_stages": round(1000 / (ours + ms["feature_map"] + ms["render"]), 3),
        **({"onnx_render_fps": round(1000 / (ms["feature_map"] + ms["render_onnx"]), 3),
            "onnx_speedup": round(ms["render"] / ms["render_onnx"], 2),
            "onnx_int8_render_fps": round(1000 / (ms["feature_map"] + ms["render_onnx_int8"]), 3),
            "onnx_int8_speedup": round(ms["render"] / ms["render_onnx_int8"], 2)} if args.onnx else {}),
        **({"compiled_render_fps": round(1000 / (ms["feature_map"] + ms["render_compiled"]), 3),
            "compile_speedup": round(ms["render"] / ms["render_compiled"], 2)} if args.compile else {}),
        "setup": {"device": str(dev), "threads": torch.get_num_threads(), "seconds": args.seconds, "frames": n,
                  "fps": pipe.fps, "image_size": list(a.image_size), "generator": pipe.renderer.net.cfg.size,
                  "ngf": pipe.renderer.net.cfg.ngf, "database_frames": 0 if enc.database is None else
                  int(enc.database.features.shape[0]), "batch_size": args.batch_size, "torch": torch.__version__},
    }


def compiled_copy(pipe: PortraitPipeline) -> FaceRenderer:
    """The pipeline's renderer with its network through torch.compile (compiled on its first call)."""
    from models.runtime.renderer import compile_renderer

    renderer = copy.copy(pipe.renderer)
    renderer.net = compile_renderer(pipe.renderer.net, pipe.renderer.device)
    return renderer


def onnx_copy(pipe: PortraitPipeline, workdir: Path, backend: str = "onnx") -> FaceRenderer:
    """The pipeline's renderer exported to ONNX files in `workdir` (float32; int8 for onnx_int8, calibrated on
    the identity's feature maps for bundled speech) and run by onnxruntime."""
    from models.runtime.onnx_export import export_int8, export_renderer
    from models.runtime.renderer import onnx_session

    path = workdir / "renderer.onnx"
    if not path.is_file():
        export_renderer(pipe, path)
    if backend == "onnx_int8":
        fp32, path = path, workdir / "renderer.int8.onnx"
        if not path.is_file():
            export_int8(pipe, fp32, path)
    renderer = copy.copy(pipe.renderer)
    renderer.session = onnx_session(path, backend)
    return renderer


def offline(args: argparse.Namespace, pipe: PortraitPipeline, audio: np.ndarray) -> dict:
    """A whole offline run (PortraitPipeline.generate) into a temporary folder: frames/s end to end."""
    clip = audio[: int(args.offline_seconds * pipe.sample_rate)]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pipe.generate(clip, Path(tmp), "bench", batch_size=args.batch_size)
        seconds = time.perf_counter() - start
    n = pipe.check_audio(clip, "benchmark audio")
    return {"offline_fps": round(n / seconds, 3), "offline_frames": n}


def stream(args: argparse.Namespace, pipe: PortraitPipeline, audio: np.ndarray, workdir: Path) -> dict:
    """A live session on `args.stream_seconds` of the audio, paced in real time: latency and throughput."""
    from models.runtime import StreamingSession, paced_chunks, run_live

    clip = audio[: int(args.stream_seconds * pipe.sample_rate)]
    renderer = {"onnx": lambda: onnx_copy(pipe, workdir), "onnx_int8": lambda: onnx_copy(pipe, workdir, "onnx_int8"),
                "compile": lambda: compiled_copy(pipe), "torch": lambda: None}[args.stream_backend]()
    session = StreamingSession(pipe, 0, None, args.batch_size, args.frame_step, hop_ms=args.hop_ms, renderer=renderer,
                               max_lag_ms=args.max_lag_ms or None)
    stats = run_live(session, paced_chunks(clip, args.chunk_ms / 1000, pipe.sample_rate), pipe.sample_rate)
    return {**{k: round(v, 2) for k, v in stats.summary().items()}, "stream_frames": stats.frames,
            "stream_frame_step": args.frame_step, "stream_chunk_ms": args.chunk_ms, "stream_hop_ms": args.hop_ms,
            "stream_backend": args.stream_backend}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        from models.live.bench import serve_main

        return serve_main(args)
    args.hop_ms = 50.0 if args.hop_ms is None else args.hop_ms
    args.max_lag_ms = args.max_lag_ms or 0.0
    import numpy as np
    import torch

    from models.runtime import PortraitPipeline
    from util.audio import load_audio
    from util.errors import run_cli
    from util.io import write_json

    torch.set_num_threads(args.threads)

    def work() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            pipe = (PortraitPipeline.from_identity(args.id, args.device, args.config_dir) if args.id
                    else random_pipeline(args, Path(tmp)))
            clip = load_audio(args.audio or DEFAULT_AUDIO, pipe.sample_rate, what="--audio")
            result = run(args, pipe, clip, Path(tmp))
            if args.offline_seconds > 0:
                result.update(offline(args, pipe, np.resize(clip, int(args.offline_seconds * pipe.sample_rate))))
            if args.stream_seconds > 0:
                live = np.resize(clip, int(args.stream_seconds * pipe.sample_rate))
                result.update(stream(args, pipe, live, Path(tmp)))
        for name, v in result["stages"].items():
            print(f"{name:>26}: {v['ms_per_frame']:9.3f} ms/frame  ({1000 / v['ms_per_frame']:9.1f} fps, "
                  f"{v['frames']} frames)")
        for key, value in result.items():
            if key not in ("stages", "setup"):
                print(f"{key:>26}: {value}")
        print(f"{'setup':>26}: {json.dumps(result['setup'])}")
        if args.json:
            write_json(args.json, result)

    return run_cli("benchmark.py", work)


if __name__ == "__main__":
    sys.exit(main())
