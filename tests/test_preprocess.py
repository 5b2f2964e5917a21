"""scripts/preprocess.py on a short real clip: the release layout, plausible tracks, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_script

from datasets.identity import IdentityAssets, load_config
from util.audio import load_audio
from util.video import VideoReader, VideoWriter

CLIP = FIXTURES / "talk_4s.mp4"  # 4 s of TedLieu_60s (EDTalk, Apache-2.0), 256^2, 25 fps, AAC
SMALL = ["--size", "128", "--min_total", "2", "--min_clip", "0.5", "--val_fraction", "0.25"]


def preprocess(tmp, *args: str) -> int:
    dirs = ["--data_root", str(tmp / "data"), "--config_dir", str(tmp / "config")]
    return load_script("preprocess").main([*args, *dirs])


@pytest.fixture(scope="module")
def identity(tmp_path_factory, landmarker):
    tmp = tmp_path_factory.mktemp("pp")
    assert preprocess(tmp, "--video", str(CLIP), "--id", "ted", *SMALL) == 0
    return tmp


def write_video(path, frames, audio=None):
    with VideoWriter(path, 25, frames[0].shape[:2], audio, 16000) as w:
        for f in frames:
            w.write(f)


def test_release_layout_with_plausible_tracks(identity):
    root = identity / "data" / "ted"
    cfg = load_config("ted", identity / "config")
    assets = IdentityAssets.load(cfg, need_apc_base=False)  # what the demo reads
    assert assets.image_size == (128, 128) and assets.candidates.shape == (4, 128, 128, 3)
    tracked = np.load(root / "tracked3D_normalized_pts_fix_contour.npy")
    fit = np.load(root / "3d_fit_data.npz")
    n = len(tracked)
    assert n == 2 * 60  # 4 s minus the validation tail (at least 2 s), resampled to 60 fps
    assert fit["trans"].shape == (n, 3, 1) and fit["rot_angles"].shape == (n, 3) and fit["pts_3d"].shape == (n, 73, 3)
    assert np.load(root / "shoulder_points3D.npy").shape == (n, 18, 3)
    assert np.load(root / "normalized_shoulder_points.npy").shape == (n, 18, 2)
    for f in root.glob("*.np[yz]"):
        data = np.load(f)
        for arr in data.values() if hasattr(data, "files") else [data]:
            assert np.isfinite(arr).all(), f
    rot = fit["rot_angles"]
    assert np.all(np.abs(rot[:, 0] - 180) < 30) and np.all(np.abs(rot[:, 1:]) < 30)  # a talking head facing us
    assert np.median(np.abs(np.diff(rot, axis=0))) < 0.5  # degrees per 1/60 s: smooth
    assert np.all(fit["trans"][:, 2] > 0)
    lips = tracked[:, 62] - tracked[:, 59]
    assert lips[:, 1].std() > 0.02  # the mouth moves (cm)


def test_reprojection_and_clips(identity):
    root = identity / "data" / "ted"
    meta = json.loads((root / "meta.json").read_text())
    # The 3D points are the tracked points back-projected, so projecting them again with the stored pose
    # and camera must land on the tracked 2D points up to float rounding: 0.01 px catches any convention
    # slip (Euler order, axis flip, crop offset), which moves points by pixels.
    assert meta["reprojection"]["max_px"] < 0.01
    assert meta["reprojection"]["rigid_point_std_over_face_width"] < 0.03
    assert [c["split"] for c in meta["clips"]] == ["train", "val"]
    for c in meta["clips"]:
        folder = root / "clips" / c["name"]
        tracks = np.load(folder / "tracks.npz")
        assert len(list((folder / "frames").glob("*.jpg"))) == c["frames"] == len(tracks["rot"])
        assert abs(len(load_audio(folder / "audio.wav")) / 16000 - c["frames"] / 25) < 0.05
        assert len(np.load(folder / "tracks_60fps.npz")["rot"]) == int(c["frames"] / 25 * 60)
    assert (root / "train_list.txt").read_text().split() == ["clip_000"]
    assert (root / "overlay.mp4").is_file()


def test_apc_features_step_and_pipeline_loads(identity):
    from models.networks import APC, Audio2FeatureNet, Audio2HeadposeNet, Feature2FaceG, Feature2FaceGConfig
    from models.runtime import PortraitPipeline
    from util.checkpoint import save_network

    apc = APC()
    save_network(identity / "apc.pth", apc, "APC", apc.cfg)
    assert preprocess(identity, "--id", "ted", "--only", "apc_features", "--apc_ckpt", str(identity / "apc.pth")) == 0
    root = identity / "data" / "ted"
    base = np.load(root / "APC_feature_base.npy")
    clip = np.load(root / "clips" / "clip_000" / "apc_features.npy")
    seconds = len(load_audio(root / "clips/clip_000/audio.wav")) / 16000
    assert base.shape == clip.shape and clip.shape[0] == 2 * int(seconds * 60)
    cfg = load_config("ted", identity / "config")
    assert cfg["model_params"]["APC"]["ckp_path"].endswith("apc.pth")
    nets = [apc.eval(), Audio2FeatureNet().eval(), Audio2HeadposeNet().eval(),
            Feature2FaceG(Feature2FaceGConfig(ngf=4, num_downs=5)).eval()]
    pipe = PortraitPipeline.build(cfg, IdentityAssets.load(cfg), *nets, torch.device("cpu"))
    pred = pipe.predict(load_audio(FIXTURES / "speech_3s.wav"))
    fmap = pipe.renderer.feature_maps(pred.face2d[:1], pred.shoulders2d[:1])
    frame = pipe.renderer(fmap)[0]
    assert frame.shape == (128, 128, 3) and fmap.max() == 255


def test_resume_reuses_and_refuses_other_video(identity, tmp_path, capsys):
    frames = sorted((identity / "data/ted/clips/clip_000/frames").glob("*.jpg"))
    stamp = frames[0].stat().st_mtime_ns
    assert preprocess(identity, "--video", str(CLIP), "--id", "ted", *SMALL) == 0
    assert frames[0].stat().st_mtime_ns == stamp  # finished steps are reused
    other = tmp_path / "other.mp4"
    other.write_bytes(CLIP.read_bytes())
    assert preprocess(identity, "--video", str(other), "--id", "ted", *SMALL) == 2
    assert "made from other videos" in capsys.readouterr().err


def test_gaps_split_or_interpolate_and_second_face_is_ignored(tmp_path, landmarker):
    frames = list(VideoReader(CLIP))
    other = list(VideoReader(FIXTURES / "other_face_4s.mp4"))
    for k in range(20, 24):  # 0.16 s without a face: bridged
        frames[k] = np.zeros_like(frames[k])
    for k in range(50, 70):  # 0.8 s without a face: the clip is split
        frames[k] = np.zeros_like(frames[k])
    for k, f in enumerate(frames):  # a second, smaller person in the corner all along
        f[:128, -128:] = other[k % len(other)]
    path = tmp_path / "gaps.mp4"
    write_video(path, frames, load_audio(CLIP))
    assert preprocess(tmp_path, "--video", str(path), "--id", "gaps", *SMALL, "--val_fraction", "0") == 0
    meta = json.loads((tmp_path / "data/gaps/meta.json").read_text())
    assert meta["sources"][0]["frames_without_face"] == 24
    assert [(c["start"], c["end"], c["interpolated_frames"]) for c in meta["clips"]] == [(0, 50, 4), (70, 100, 0)]
    assert meta["sources"][0]["multi_face_frames"] > 50
    tracks = np.load(tmp_path / "data/gaps/clips/clip_000/tracks.npz")
    assert tracks["pts2d"][:, :, 0].mean() < 90  # the main face (crop centre 64), not the corner one


def test_bad_inputs(tmp_path, capsys, landmarker):
    def error(*args: str) -> str:
        assert preprocess(tmp_path, *args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("preprocess.py: error: ")
        return lines[-1]

    silent = tmp_path / "silent.mp4"
    write_video(silent, list(VideoReader(CLIP)))
    assert "has no audio stream; give the speech with --audio" in error("--video", str(silent), "--id", "a", *SMALL)
    assert preprocess(tmp_path, "--video", str(silent), "--audio", str(CLIP), "--id", "a", *SMALL) == 0
    assert "training needs at least 20 s" in error("--video", str(CLIP), "--id", "b")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 50)
    assert "junk.mp4: cannot be decoded" in error("--video", str(junk), "--id", "c", *SMALL)
    assert "video not found" in error("--video", str(tmp_path / "none.mp4"), "--id", "c", *SMALL)
    (tmp_path / "data" / "mine").mkdir(parents=True)
    (tmp_path / "data" / "mine" / "notes.txt").write_text("my own files")
    assert "was not made by preprocess.py" in error("--video", str(CLIP), "--id", "mine", *SMALL)
    assert (tmp_path / "data" / "mine" / "notes.txt").read_text() == "my own files"


@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".mov"])
def test_containers_and_rotation_metadata(tmp_path, suffix):
    import subprocess

    from util.video import ffmpeg_exe

    narrow = tmp_path / "narrow.mp4"  # 256 x 192, then flagged as rotated by 90 degrees
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(CLIP), "-t", "1", "-vf", "crop=256:192:0:0",
                    "-c:v", "libx264", "-an", str(narrow)], check=True)
    out = tmp_path / f"rotated{suffix}"
    codec = ["-c:v", "libvpx-vp9"] if suffix == ".webm" else ["-c", "copy"]
    subprocess.run([ffmpeg_exe(), "-v", "error", "-display_rotation", "90", "-i", str(narrow), *codec, str(out)],
                   check=True)
    upright = next(iter(VideoReader(narrow)))
    rotated = next(iter(VideoReader(out)))
    assert rotated.shape == (256, 192, 3)
    assert np.abs(np.rot90(upright).astype(int) - rotated.astype(int)).mean() < 8  # turned, as a player shows it
