"""demo.py end to end on tiny random-weight identities, and every bad input it must explain."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FIXTURES

import demo
from models.runtime import PortraitPipeline
from util.errors import InputError, MissingFileError
from util.video import probe

SPEECH = FIXTURES / "speech_3s.wav"


def run(project, tmp_path, *extra: str, audio=SPEECH, identity="tiny") -> int:
    args = ["--id", identity, "--driving_audio", str(audio), "--config_dir", str(project / "config"),
            "--results_dir", str(tmp_path / "results"), *extra]
    return demo.cli(args)


def test_demo_writes_video_with_audio_and_landmarks(project, tmp_path):
    assert run(project, tmp_path, "--seed", "3", "--batch_size", "4") == 0
    out = tmp_path / "results" / "tiny" / "speech_3s"
    info = probe(out / "speech_3s.mp4")
    n = int(3.0 * 60)  # every 1/60 s of audio gets a frame: the end is padded, not cut by the lookahead
    assert info["frames"] == n
    assert info["video"].startswith("h264") and "yuv420p" in info["video"] and "60 fps" in info["video"]
    assert info["audio"] is not None and info["audio"].startswith("aac")
    assert probe(out / "speech_3s_feature_maps.mp4")["frames"] == n
    data = np.load(out / "speech_3s.npz")
    assert data["landmarks2d"].shape == (n, 73, 2) and data["rotation"].shape == (n, 3)
    assert data["shoulders2d"].shape == (n, 18, 2) and np.isfinite(data["landmarks3d"]).all()
    assert (out / "demo_opt.txt").is_file() and (out / "opt.json").is_file()


def test_overlapped_stages_write_the_same_outputs(project, tmp_path):
    outs = {}
    for mode in ("on", "off"):
        assert run(project, tmp_path / mode, "--seed", "2", "--overlap", mode, "--batch_size", "3") == 0
        out = tmp_path / mode / "results" / "tiny" / "speech_3s"
        assert probe(out / "speech_3s.mp4")["frames"] == 180
        with np.load(out / "speech_3s.npz") as data:
            outs[mode] = {k: data[k] for k in data.files}
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary files left
    assert outs["on"].keys() == outs["off"].keys()
    for key in outs["on"]:
        np.testing.assert_array_equal(outs["on"][key], outs["off"][key])


def test_same_seed_same_motion_other_seed_differs(project):
    pipe = PortraitPipeline.from_identity("tiny", "cpu", project / "config")
    audio, _ = sf.read(SPEECH, dtype="float32")
    a, b = pipe.predict(audio, seed=1), pipe.predict(audio, seed=1)
    c = pipe.predict(audio, seed=2)
    np.testing.assert_array_equal(a.rotation, b.rotation)
    assert not np.allclose(a.rotation, c.rotation)
    still = pipe.predict(audio, seed=1, sigma_scale=0.0)
    assert np.abs(np.diff(still.rotation, axis=0)).mean() < np.abs(np.diff(a.rotation, axis=0)).mean()


def test_zero_pose_gains_hold_the_mean_pose(project, tmp_path):
    import dataclasses

    pipe = PortraitPipeline.from_identity("tiny", "cpu", project / "config")
    settings = pipe.audio_side.settings  # Headpose.AMP [rot, trans]: the sampled motion scaled to nothing
    pipe.audio_side.settings = dataclasses.replace(settings, pose=dataclasses.replace(settings.pose, rot_gain=0.0,
                                                                                       trans_gain=0.0))
    audio, _ = sf.read(SPEECH, dtype="float32")
    pred = pipe.predict(audio, seed=0)
    np.testing.assert_allclose(pred.rotation, np.tile([180.0, 0, 0], (pred.n_frames, 1)), atol=1e-9)
    np.testing.assert_allclose(pred.translation, np.tile(pipe.assets.mean_trans, (pred.n_frames, 1)), atol=1e-9)
    assert np.abs(pred.extras["headpose_samples"]).max() > 0  # the samples themselves were not zero


def test_explicit_pose_file_drives_the_head(project, tmp_path):
    poses = np.zeros((10, 6))
    poses[:, 0], poses[:, 1], poses[:, 5] = 180.0, np.linspace(-10, 10, 10), 10.0
    np.save(tmp_path / "poses.npy", poses)
    assert run(project, tmp_path, "--pose_file", str(tmp_path / "poses.npy"), "--save_intermediates") == 0
    out = tmp_path / "results" / "tiny" / "speech_3s"
    data = np.load(out / "speech_3s.npz")
    assert data["rotation"][:10, 1].tolist() == pytest.approx(np.linspace(-10, 10, 10).tolist())
    assert len(list((out / "frames").glob("pred_*.png"))) == 180 and "apc_features" in data


def test_stereo_44k_and_mp3_driving_audio(project, tmp_path):
    import soxr

    audio, _ = sf.read(SPEECH, dtype="float32")
    stereo = soxr.resample(audio, 16000, 44100)
    sf.write(tmp_path / "st.wav", np.stack([stereo, stereo], 1), 44100, subtype="PCM_24")
    assert run(project, tmp_path, audio=tmp_path / "st.wav") == 0
    assert probe(tmp_path / "results" / "tiny" / "st" / "st.mp4")["frames"] == 180


def test_bad_inputs_give_one_line_errors(project, tmp_path, capsys):
    def error(*extra, **kw) -> str:
        assert run(project, tmp_path, *extra, **kw) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and errors[0].startswith("demo.py: error: ") and "Traceback" not in err
        return errors[0]

    assert "no config file" in error(identity="nobody")
    assert "missing.wav" in error(audio=tmp_path / "missing.wav")
    (tmp_path / "junk.mp3").write_bytes(b"\x00\x01garbage" * 100)
    assert "junk.mp3: cannot be decoded" in error(audio=tmp_path / "junk.mp3")
    sf.write(tmp_path / "short.wav", np.zeros(4000), 16000)  # 0.25 s < 19 frames of lookahead
    assert "too short" in error(audio=tmp_path / "short.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    assert "no audio samples" in error(audio=tmp_path / "empty.wav")
    if not torch.cuda.is_available():
        assert "--device cuda: no CUDA GPU" in error("--device", "cuda")
    assert run(project, tmp_path) == 0
    capsys.readouterr()
    assert "already exists" in error()  # never overwrite a user's results silently
    assert run(project, tmp_path, "--overwrite") == 0


def test_missing_or_broken_identity_files(project, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(project, root)
    data = root / "data" / "tiny"
    (data / "mean_pts3d.npy").unlink()
    with pytest.raises(MissingFileError, match="mean_pts3d.npy"):
        PortraitPipeline.from_identity("tiny", "cpu", root / "config")
    np.save(data / "mean_pts3d.npy", np.zeros((70, 3)))
    with pytest.raises(InputError, match="mean_pts3d.npy: expected shape 73x3"):
        PortraitPipeline.from_identity("tiny", "cpu", root / "config")
    np.save(data / "mean_pts3d.npy", np.zeros((73, 3)))
    ckpt = data / "checkpoints" / "Audio2Feature.pth"
    obj = torch.load(ckpt, weights_only=True)
    obj["state_dict"]["fc.6.weight"] = torch.zeros(70, 512)
    torch.save(obj, ckpt)
    with pytest.raises(InputError, match=r"Audio2Feature\.pth: wrong shapes: fc\.6\.weight"):
        PortraitPipeline.from_identity("tiny", "cpu", root / "config")
    del obj["state_dict"]["fc.6.weight"]
    torch.save(obj, ckpt)
    with pytest.raises(InputError, match="missing keys: fc.6.weight"):
        PortraitPipeline.from_identity("tiny", "cpu", root / "config")
    shutil.copy(data / "checkpoints" / "Audio2Headpose.pth", ckpt)
    with pytest.raises(InputError, match="holds a 'Audio2Headpose' network, expected 'Audio2Feature'"):
        PortraitPipeline.from_identity("tiny", "cpu", root / "config")
    shutil.rmtree(data)
    with pytest.raises(MissingFileError, match="identity folder not found"):
        PortraitPipeline.from_identity("tiny", "cpu", root / "config")
