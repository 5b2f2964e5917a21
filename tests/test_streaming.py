"""Live sessions: the same frames as offline for any chunking, flushing mid-utterance, silence, ONNX."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FIXTURES, ar1, load_script
from scipy.ndimage import correlate1d, gaussian_filter1d

import demo
from datasets.identity import set_config_value
from models.networks import Audio2FeatureEnsemble, Audio2FeatureNet, Audio2HeadposeConfig
from models.networks.audio2headpose import generate_headpose_full
from models.runtime import PortraitPipeline, StreamingSession, paced_chunks, postprocess, run_live
from models.runtime.manifold import project_to_manifold
from models.runtime.smoothing import CausalSmoother, SymmetricSmoother
from models.runtime.streams import NoiseSource
from models.synthetic import make_identity
from util.checkpoint import save_network
from util.errors import InputError
from util.geometry import denormalise_pose, project_landmarks
from util.io import read_yaml
from util.video import probe


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    # the release's receptive field (255 frames) at a sixteenth of its width: the full-window reference is cheap
    make_identity(root, "tiny", size=64, a2h=Audio2HeadposeConfig(residual_channels=16, dilation_channels=16,
                                                                  skip_channels=32, cond_channels=64))
    set_config_value(root / "config", "tiny", ("model_params", "Headpose", "noise_correlation"), 8.0)  # slow noise
    return root


@pytest.fixture(scope="module")
def pipe(project):
    return PortraitPipeline.from_identity("tiny", "cpu", project / "config")


SPEECH = sf.read(FIXTURES / "speech_3s.wav", dtype="float32")[0]


@pytest.fixture(scope="module")
def speech():
    return SPEECH


def stream_all(pipe, audio, chunk: int, batch_size: int = 1, hop_ms: float = 50.0):
    session = StreamingSession(pipe, seed=5, batch_size=batch_size, hop_ms=hop_ms)
    frames = []
    for i in range(0, len(audio), chunk):
        frames += session.push(audio[i : i + chunk])
    return frames + session.finish()


@functools.cache
def reference(pipe, seconds, seed):
    return reference_audio_side(pipe, SPEECH[: int(seconds * 16000)], seed)


def reference_audio_side(pipe, audio, seed):
    """The audio side computed the straightforward way, without the streams: whole-clip mel, APC and
    LSTM passes, the original full-window WaveNet per pose, and both smoothers as plain filters over
    the whole sequence. Returns (face2d (N, 73, 2), rotation (N, 3))."""
    side, st = pipe.audio_side, pipe.settings
    n = pipe.check_audio(audio, "speech")
    with torch.no_grad():
        feats = side.encoder.apc(torch.from_numpy(side.encoder.mel(audio))[None])[0][0]  # (2N, d)
    feats = project_to_manifold(feats, side.encoder.database, st.encoder.knear, st.encoder.blend)
    pairs, d = feats.reshape(n, -1), feats.shape[1]

    def padded(frames):  # the clip's pairs, then `frames` pairs of its last APC frame (LSP §1.5)
        return torch.cat([pairs, feats[-1:].repeat(frames, 2)])

    ff = st.mouth.frame_future
    with torch.no_grad():
        disp = side.mouth_net(padded(ff).reshape(1, -1, d))[0][0, ff : ff + n].double().numpy()
    r = SymmetricSmoother(st.mouth.sigma, st.mouth.smooth_lookahead).radius
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / st.mouth.sigma) ** 2)
    disp = correlate1d(disp, w / w.sum(), axis=0, mode="reflect").reshape(n, -1, 3)
    face3d = postprocess.mouth_faces(disp, side.assets, side.assets.tracked_pts3d.mean(0), st.mouth, 0)
    draws = NoiseSource(seed, side.pose_net.cfg.ndim)  # independent draws, made slow here as AR(1) noise
    noise, uniform = (torch.cat(x) for x in zip(*(draws.draw(i) for i in range(n))))
    noise = ar1(noise, st.pose.noise_correlation)
    raw = generate_headpose_full(side.pose_net, padded(st.pose.frame_future), n, st.pose.frame_future, noise, uniform,
                                 st.pose.sigma_scale).double().numpy()

    def causal(x, sigma, start):  # a one-sided Gaussian over the past, the frames before the first = start
        k = np.exp(-0.5 * (np.arange(int(np.ceil(4 * sigma)) + 1) / sigma) ** 2)
        x = np.concatenate([np.repeat(start[None], len(k) - 1, 0), x])
        return np.stack([(k[::-1, None] * x[t : t + len(k)]).sum(0) / k.sum() for t in range(len(x) - len(k) + 1)])

    rest = side.assets.rest_pose  # the person's mean pose, which the motion eases in from
    assert rest is not None and np.abs(rest[:3]).max() > 0.1  # the synthetic identity's is not all zeros
    pose = np.concatenate([causal(raw[:, :3] * st.pose.rot_gain, st.pose.rot_sigma, rest[:3] * st.pose.rot_gain),
                           causal(raw[:, 3:6] * st.pose.trans_gain, st.pose.trans_sigma,
                                  rest[3:] * st.pose.trans_gain)], 1)
    rot, trans = denormalise_pose(pose, side.assets.mean_trans)
    return project_landmarks(face3d, rot, trans, side.assets.scale, side.assets.intrinsic), rot


@pytest.mark.parametrize("seconds,chunk,hop_ms", [(1.0, 1, 0.0), (1.0, 1, 50.0), (3.0, 160, 50.0), (3.0, 16000, 50.0),
                                                 (3.0, 160, 300.0)])
def test_streaming_equals_the_whole_clip_reference(pipe, speech, seconds, chunk, hop_ms):
    audio = speech[: int(seconds * 16000)]
    face2d, rot = reference(pipe, seconds, seed=5)
    frames = stream_all(pipe, audio, chunk, batch_size=1 if chunk > 1 else 3, hop_ms=hop_ms)
    assert [f.index for f in frames] == list(range(len(face2d)))
    np.testing.assert_allclose(np.concatenate([f.landmarks.face2d for f in frames]), face2d, atol=1e-3)
    np.testing.assert_allclose(np.concatenate([f.landmarks.rotation for f in frames]), rot, atol=1e-4)
    assert np.abs(np.diff(rot, axis=0)).max() > 1e-3  # the head moves: the comparison is not of still poses
    shoulders = np.concatenate([f.landmarks.shoulders2d for f in frames])
    rendered = pipe.renderer(pipe.renderer.feature_maps(face2d, shoulders))
    assert max(np.abs(f.rgb.astype(int) - r.astype(int)).max() for f, r in zip(frames, rendered)) <= 1
    offline = pipe.predict(audio, seed=5)  # the offline path runs the same streams in its own chunks
    np.testing.assert_allclose(offline.face2d, face2d, atol=1e-3)


def test_stop_mid_utterance_flushes_every_frame(pipe, speech):
    cut = speech[: int(1.37 * 16000)]
    frames = stream_all(pipe, cut, 320)
    assert len(frames) == int(1.37 * 60) and all(np.isfinite(f.landmarks.face2d).all() for f in frames)
    np.testing.assert_allclose(np.concatenate([f.landmarks.face2d for f in frames]),
                               reference(pipe, 1.37, seed=5)[0], atol=1e-3)


def test_silence_gives_a_still_breathing_head(pipe):
    frames = stream_all(pipe, np.zeros(2 * 16000, np.float32), 320)
    rot = np.concatenate([f.landmarks.rotation for f in frames])
    assert len(frames) == 120 and np.isfinite(rot).all()
    assert rot.std(0).max() < 5.0  # still, though sampled motion keeps it alive


def test_live_latency_is_measured(pipe, speech):
    stats = run_live(StreamingSession(pipe), paced_chunks(speech[:16000], 0.02, 16000, paced=False), 16000)
    summary = stats.summary()
    assert stats.frames == 60 and summary["stream_fps"] > 0 and np.isfinite(summary["stream_latency_ms_p95"])


def test_latency_grows_when_the_renderer_cannot_keep_up(pipe, speech):
    import time

    class SlowRenderer:  # 25 ms a frame: 1.5 s of work per second of 60 fps video
        def feature_maps(self, face2d, shoulders2d):
            return pipe.renderer.feature_maps(face2d, shoulders2d)

        def warm_up(self, batch_size):
            pass

        def __call__(self, maps):
            time.sleep(0.025 * len(maps))
            return np.zeros((len(maps), *maps.shape[1:], 3), np.uint8)

    session = StreamingSession(pipe, renderer=SlowRenderer())
    stats = run_live(session, paced_chunks(speech[:16000], 0.02, 16000), 16000)
    lat = np.asarray(stats.latencies_ms)
    assert stats.frames == 60 and stats.summary()["real_time_factor"] > 1.2
    assert lat[-10:].mean() > lat[:10].mean() + 300  # falling behind shows, it is not hidden

    # with max_lag_ms the session skips late frames instead, and every index still comes out in order
    session = StreamingSession(pipe, renderer=SlowRenderer(), max_lag_ms=50)
    out = []
    stats = run_live(session, paced_chunks(speech[:16000], 0.02, 16000), 16000, on_frame=out.append)
    assert [f.index for f in out] == list(range(60)) and stats.dropped > 0 and stats.frames + stats.dropped == 60
    assert all(f.rgb is not None for f in out) and not out[0].dropped
    assert max(stats.latencies_ms) < min(lat[-10:])  # stays live


@pytest.mark.parametrize("sigma,chunks", [(2.0, [1] * 40), (1.5, [7, 13, 1, 19]), (3.0, [40])])
def test_symmetric_smoother_streams_like_scipy(sigma, chunks):
    x = np.random.default_rng(0).normal(size=(sum(chunks), 4))
    full = SymmetricSmoother(sigma, max_lookahead=100)  # an untruncated kernel: exactly scipy's
    out, i = [], 0
    for c in chunks:
        out.append(full.push(x[i : i + c]))
        i += c
    out.append(full.finish())
    np.testing.assert_allclose(np.concatenate(out), gaussian_filter1d(x, sigma, axis=0, mode="reflect"), atol=1e-9)
    short = SymmetricSmoother(sigma, max_lookahead=2)
    assert len(short.push(x[:10])) == 8 and short.radius == 2  # frames wait for 2 frames of lookahead only


def test_causal_smoother_uses_only_the_past():
    x = np.random.default_rng(1).normal(size=(30, 2))
    a = CausalSmoother(3.0).push(x)
    s = CausalSmoother(3.0)
    b = np.concatenate([s.push(x[:11]), s.push(x[11:12]), s.push(x[12:])])
    np.testing.assert_allclose(a, b)
    changed = x.copy()
    changed[20:] += 10
    np.testing.assert_allclose(CausalSmoother(3.0).push(changed)[:20], a[:20])  # the future does not leak


def test_causal_smoother_eases_in_from_a_start_value():
    x = np.full((40, 2), 6.0)  # motion that begins far from the rest pose
    start = np.array([0.0, 1.0])
    eased = CausalSmoother(3.0, start).push(x)
    w = np.exp(-0.5 * (np.arange(13) / 3.0) ** 2)
    np.testing.assert_allclose(eased[0], (w[0] * 6.0 + w[1:].sum() * start) / w.sum())  # near the rest pose...
    assert np.all(np.diff(eased[:13, 0]) > 0)  # ...then moving towards the motion without a jump
    np.testing.assert_allclose(eased[12:], 6.0)  # past the kernel's length the start is forgotten
    np.testing.assert_allclose(CausalSmoother(3.0).push(x), 6.0)  # without it: the first frame at once
    s = CausalSmoother(3.0, start)
    np.testing.assert_allclose(np.concatenate([s.push(x[:5]), s.push(x[5:])]), eased)  # streams the same


def test_onnx_renderer_equals_torch(pipe, tmp_path):
    from models.runtime.onnx_export import export_renderer
    from models.runtime.renderer import onnx_session as _onnx_session

    path = tmp_path / "g.onnx"
    assert export_renderer(pipe, path) < 1e-3
    maps = pipe.renderer.feature_maps(*[x[:3] for x in (pipe.predict(np.zeros(16000, np.float32)).face2d,
                                                       pipe.predict(np.zeros(16000, np.float32)).shoulders2d)])
    import copy

    onnx = copy.copy(pipe.renderer)
    onnx.session = _onnx_session(path)
    assert np.abs(onnx(maps).astype(int) - pipe.renderer(maps).astype(int)).max() <= 1


def test_int8_renderer_is_calibrated_and_checked(pipe, speech, tmp_path, monkeypatch):
    import copy

    from models.runtime import onnx_export
    from models.runtime.renderer import onnx_session as _onnx_session

    fp32, int8 = tmp_path / "g.onnx", tmp_path / "g.int8.onnx"
    onnx_export.export_renderer(pipe, fp32)
    maps = onnx_export.calibration_maps(pipe, speech[:32000], count=12)
    assert maps.shape[0] == 12 and maps.dtype == np.uint8 and maps.max() == 255  # drawn lines, not blanks
    score = onnx_export.quantize_renderer(fp32, int8, pipe.renderer.onnx_inputs(maps))
    assert score >= onnx_export.MIN_INT8_PSNR and int8.is_file()
    renderer = copy.copy(pipe.renderer)
    renderer.session = _onnx_session(int8, "onnx_int8")
    test = onnx_export.calibration_maps(pipe, speech[32000:64000], count=4)  # frames it was not calibrated on
    out, ref = renderer(test).astype(float), pipe.renderer(test).astype(float)
    assert out.shape == ref.shape and 10 * np.log10(255**2 / np.mean((out - ref) ** 2)) > 25
    # a file that cannot meet the bar is refused, and nothing is written
    monkeypatch.setattr(onnx_export, "MIN_INT8_PSNR", 1000.0)
    with pytest.raises(onnx_export.ExportError, match="int8"):
        onnx_export.quantize_renderer(fp32, tmp_path / "bad.int8.onnx", pipe.renderer.onnx_inputs(maps))
    assert not (tmp_path / "bad.int8.onnx").exists()


@pytest.mark.slow
@pytest.mark.ci
def test_compiled_renderer_equals_eager(project, pipe, speech):
    compiled = PortraitPipeline.from_identity("tiny", "cpu", project / "config", backend="compile")
    pred = pipe.predict(speech[:16000], seed=0)
    maps = pipe.renderer.feature_maps(pred.face2d[:3], pred.shoulders2d[:3])
    diff = np.abs(compiled.renderer(maps).astype(int) - pipe.renderer(maps).astype(int)).max()
    assert diff <= 1


def test_demo_stream_and_onnx_backend(project, tmp_path, capsys):
    from conftest import load_script

    base = ["--id", "tiny", "--driving_audio", str(FIXTURES / "speech_3s.wav"), "--config_dir",
            str(project / "config"), "--results_dir", str(tmp_path)]
    assert demo.cli([*base, "--stream", "--chunk_ms", "100", "--frame_step", "2", "--max_lag_ms", "0"]) == 0
    assert "live: 90 frames, latency p50" in capsys.readouterr().out
    info = probe(tmp_path / "tiny" / "speech_3s" / "speech_3s.mp4")
    assert info["frames"] == 90 and "30 fps" in info["video"] and info["audio"] is not None
    assert demo.cli([*base, "--backend", "onnx", "--overwrite"]) == 2  # not exported yet
    assert "export_onnx.py" in capsys.readouterr().err
    assert load_script("export_onnx").main(["--id", "tiny", "--config_dir", str(project / "config")]) == 0
    assert demo.cli([*base, "--backend", "onnx", "--overwrite"]) == 0
    assert demo.cli([*base, "--backend", "onnx_int8", "--overwrite"]) == 2  # int8 not exported yet
    assert "export_onnx.py --id <id> --int8" in capsys.readouterr().err
    assert load_script("export_onnx").main(["--id", "tiny", "--config_dir", str(project / "config"), "--int8",
                                            "--calibration_speech", str(FIXTURES / "speech_3s.wav")]) == 0
    assert "int8 vs float32" in capsys.readouterr().out
    assert demo.cli([*base, "--backend", "onnx_int8", "--overwrite"]) == 0


def test_mic_without_a_device_is_a_clear_error(project, tmp_path, capsys):
    try:
        import sounddevice as sd

        sd.query_devices(kind="input")
        pytest.skip("a sound input device exists here")
    except Exception:
        pass
    args = ["--id", "tiny", "--mic", "--config_dir", str(project / "config"), "--results_dir", str(tmp_path)]
    assert demo.cli(args) == 2
    assert "--mic: no usable sound input device" in capsys.readouterr().err


def test_inference_builds_no_autograd_graph(pipe, speech):
    outputs = []

    def record(module, inputs, output):
        outputs.extend(t for t in (output if isinstance(output, tuple) else (output,)) if isinstance(t, torch.Tensor))

    nets = [pipe.audio_side.encoder.apc, pipe.audio_side.mouth_net, pipe.audio_side.pose_net, pipe.renderer.net]
    hooks = [m.register_forward_hook(record) for net in nets for m in net.modules()]
    try:
        with torch.enable_grad():  # a caller that left gradients on
            frames = stream_all(pipe, speech[:16000], 1600)
    finally:
        for h in hooks:
            h.remove()
    assert len(frames) == 60 and len(outputs) > 100
    assert not any(t.requires_grad for t in outputs)  # no graph kept alive by the live loop


def test_benchmark_reports_every_key(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--image_size", "64", "--ngf", "8", "--num_downs", "6", "--database_frames", "300", "--seconds", "1",
            "--render_frames", "2", "--repeats", "1", "--reference_frames", "8", "--onnx", "--offline_seconds", "0.5",
            "--stream_seconds", "1", "--chunk_ms", "40", "--json", str(out)]
    assert load_script("benchmark").main(args) == 0
    result = json.loads(out.read_text())
    for key in ("audio_side_fps", "render_fps", "reference_audio_side_fps", "offline_fps", "onnx_render_fps",
                "onnx_int8_render_fps", "stream_latency_ms_p50", "stream_latency_ms_p95", "stream_fps"):
        assert np.isfinite(result[key]) and result[key] > 0, key
    assert result["stream_latency_ms_p95"] >= result["stream_latency_ms_p50"]
    for stage in ("mel", "apc", "manifold", "audio2feature", "audio2headpose", "render", "reference_audio2headpose"):
        assert result["stages"][stage]["ms_per_frame"] > 0, stage


def test_a_far_too_slow_renderer_skips_instead_of_falling_behind(pipe, speech):
    """A renderer needing 0.3 s a frame at 4 frames/s (frame_step 15): the paced source hands over all the
    audio that arrived while it rendered, the late frames are skipped, and the latency stays bounded by
    the lookahead + max_lag + hop + two render times instead of growing with the session."""
    import time

    class SlowRenderer:
        def feature_maps(self, face2d, shoulders2d):
            return np.zeros((len(face2d), 64, 64), np.uint8)

        def warm_up(self, batch_size):
            pass

        def __call__(self, maps):
            time.sleep(0.3 * len(maps))
            return np.zeros((len(maps), 64, 64, 3), np.uint8)

    session = StreamingSession(pipe, renderer=SlowRenderer(), frame_step=15, max_lag_ms=150)
    out = []
    stats = run_live(session, paced_chunks(np.tile(speech, 2), 0.02, 16000), 16000, on_frame=out.append)
    bound = 1000 * (session.lookahead / pipe.fps + 0.15 + 0.05 + 2 * 0.3)
    assert stats.dropped > 0 and [f.index for f in out] == list(range(0, 360, 15))
    assert max(stats.latencies_ms) < bound + 300, (max(stats.latencies_ms), bound)  # 300 ms of scheduling slack


def ensemble_config(project, name: str, paths: list[str]) -> Path:
    """A config folder in `project` whose 'tiny' identity lists `paths` as its mouth models."""
    folder = project / name
    folder.mkdir(exist_ok=True)
    shutil.copy(project / "config" / "tiny.yaml", folder / "tiny.yaml")
    set_config_value(folder, "tiny", ("model_params", "Audio2Mouth", "ckp_path"), paths)
    return folder


def other_mouth_model(project, seed: int, frame_future: int = 18) -> str:
    """Another randomly initialised mouth model saved beside the identity's: its config path."""
    torch.manual_seed(seed)
    net = Audio2FeatureNet()
    path = project / "data" / "tiny" / "checkpoints" / f"Audio2Feature_{seed}_{frame_future}.pth"
    save_network(path, net, "Audio2Feature", net.cfg, {"fps": 60, "frame_future": frame_future})
    return f"./{path.relative_to(project).as_posix()}"


def test_a_mouth_ensemble_averages_its_members_also_streamed(project, pipe, speech):
    own = read_yaml(project / "config" / "tiny.yaml")["model_params"]["Audio2Mouth"]["ckp_path"]
    folder = ensemble_config(project, "ens", [own, other_mouth_model(project, 1)])
    ens = PortraitPipeline.from_identity("tiny", "cpu", folder)
    net = ens.audio_side.mouth_net
    assert isinstance(net, Audio2FeatureEnsemble) and len(net.members) == 2
    x = torch.randn(1, 40, 512)
    with torch.no_grad():
        whole, _ = net(x)
        first, state = net(x[:, :16])
        second, _ = net(x[:, 16:], state)
        members = [m(x)[0] for m in net.members]
    torch.testing.assert_close(whole, (members[0] + members[1]) / 2)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)  # each member keeps its own LSTM state
    assert not torch.allclose(members[0], members[1])
    audio = speech[: 16000]
    face2d, _ = reference_audio_side(ens, audio, seed=5)
    frames = stream_all(ens, audio, 160)
    np.testing.assert_allclose(np.concatenate([f.landmarks.face2d for f in frames]), face2d, atol=1e-3)
    assert np.abs(face2d - reference(pipe, 1.0, seed=5)[0]).max() > 1e-3  # not the first member's mouth
    twice = PortraitPipeline.from_identity("tiny", "cpu", ensemble_config(project, "twice", [own, own]))
    np.testing.assert_allclose(twice.predict(audio, seed=5).face2d, pipe.predict(audio, seed=5).face2d, atol=1e-5)


def test_a_mouth_ensemble_of_different_lookaheads_is_refused(project):
    own = read_yaml(project / "config" / "tiny.yaml")["model_params"]["Audio2Mouth"]["ckp_path"]
    folder = ensemble_config(project, "mixed", [own, other_mouth_model(project, 2, frame_future=9)])
    with pytest.raises(InputError, match=r"checkpoints disagree on frame_future .*_2_9\.pth: 9"):
        PortraitPipeline.from_identity("tiny", "cpu", folder)
    set_config_value(folder, "tiny", ("model_params", "Audio2Mouth", "ckp_path"), [])
    with pytest.raises(InputError, match=r"Audio2Mouth\.ckp_path must be a path or a non-empty list"):
        PortraitPipeline.from_identity("tiny", "cpu", folder)
    set_config_value(folder, "tiny", ("model_params", "Audio2Mouth", "ckp_path"), own)
    set_config_value(folder, "tiny", ("model_params", "Headpose", "ckp_path"), [own])  # only the mouth is averaged
    with pytest.raises(InputError, match=r"Headpose\.ckp_path must be a path"):
        PortraitPipeline.from_identity("tiny", "cpu", folder)
