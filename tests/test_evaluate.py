"""Evaluation metrics on known inputs, and the quickstart end to end (tiny profile)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FIXTURES, load_script

from models.evaluation import metrics as M
from models.evaluation.evaluate import mouth_scores, speaker_mouth_scores, track_video
from models.evaluation.lpips import LPIPS, alexnet_features
from models.evaluation.syncnet import SyncNet, mfcc, score_video
from models.runtime import motion
from models.synthetic import synthetic_face
from util.errors import InputError
from util.io import read_yaml
from util.landmarks import face_width, mouth_opening


def test_psnr_and_ssim_on_known_images():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert M.psnr(img, img) == math.inf and M.ssim(img, img) == pytest.approx(1.0)
    brighter = np.clip(img.astype(int) + 10, 0, 255)
    mse = np.mean((brighter - img) ** 2)
    assert M.psnr(img, brighter) == pytest.approx(10 * np.log10(255**2 / mse))
    noisy = np.clip(img + rng.normal(0, 40, img.shape), 0, 255)
    assert 0 < M.ssim(img, noisy) < 0.9 and M.ssim(img, brighter) > M.ssim(img, noisy)


def test_pose_statistics_averaged_over_draws():
    t = np.arange(120) / 60
    rot = np.stack([np.sin(2 * np.pi * t), 2 * np.cos(2 * np.pi * t), 0 * t], 1)
    one = M.pose_statistics(rot, np.zeros((120, 3)), 60.0)
    assert one["rot_std_deg"] == pytest.approx([np.sqrt(0.5), np.sqrt(2.0), 0.0], rel=1e-6)
    other = M.pose_statistics(3 * rot, np.ones((120, 3)), 60.0)
    both = M.mean_pose_statistics([one, other])
    assert both["draws"] == 2
    assert both["rot_std_deg"] == pytest.approx([2 * np.sqrt(0.5), 2 * np.sqrt(2.0), 0.0], rel=1e-6)
    assert both["rot_speed_deg_s"] == pytest.approx(2 * one["rot_speed_deg_s"])
    np.testing.assert_allclose(both["rot_std_deg_range"], [[np.sqrt(0.5), 3 * np.sqrt(0.5)],
                                                           [np.sqrt(2.0), 3 * np.sqrt(2.0)], [0.0, 0.0]], rtol=1e-6)


def test_window_std_range_spans_calm_and_lively_stretches():
    rng = np.random.default_rng(0)
    calm, lively = rng.normal(0, 1, (600, 3)), rng.normal(0, 3, (600, 3))
    lo_hi = np.array(M.window_std_range([np.concatenate([calm, lively])], 300))
    assert lo_hi.shape == (3, 2)
    assert np.all(np.abs(lo_hi[:, 0] - 1) < 0.2) and np.all(np.abs(lo_hi[:, 1] - 3) < 0.5)  # each stretch's own
    whole = np.array(M.window_std_range([calm, lively], 1000))  # clips shorter than a window count whole
    np.testing.assert_allclose(whole[:, 0], calm.std(0) + 0.05 * (lively.std(0) - calm.std(0)))  # percentile 5
    np.testing.assert_allclose(whole[:, 1], calm.std(0) + 0.95 * (lively.std(0) - calm.std(0)))


def test_mouth_distance_and_opening():
    face = np.repeat(synthetic_face(np.random.default_rng(0))[None], 10, 0)
    shifted = face.copy()
    shifted[:, M.MOUTH, :2] += [3.0, 4.0]  # every mouth point moved by 5 units
    assert M.mouth_lmd(face, face, 2.0) == 0
    assert M.mouth_lmd(shifted, face, 2.0) == pytest.approx(10.0)  # 5 units x 2 px per unit
    opening = mouth_opening(face)
    assert np.allclose(opening, np.linalg.norm(face[0, 62] - face[0, 59]))
    assert np.allclose(face_width(face), np.linalg.norm(face[0, 14] - face[0, 0]))


def test_mouth_scores_identical_and_moving():
    face = np.repeat(synthetic_face(np.random.default_rng(0))[None], 50, 0)
    face[:, 59:61, 1] -= 0.05 * np.sin(np.arange(50) / 3)[:, None]
    same = mouth_scores(face, face, 1.0)
    assert same["m_lmd_px"] == pytest.approx(0, abs=1e-9) and same["opening_correlation"] == pytest.approx(1.0)
    still = face.copy()
    still[:, 59:61] = face[0, 59:61]
    assert mouth_scores(still, face, 1.0)["m_lmd_px"] > 0


def lpips_files(folder, drop: str | None = None):
    """Random weights in the layouts of torchvision's AlexNet file and LPIPS's alex.pth."""
    torch.manual_seed(0)
    alex = {f"features.{k}": v for k, v in alexnet_features().state_dict().items()}
    alex["classifier.1.weight"] = torch.zeros(4096, 9216)  # the classifier is in the file and ignored
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    alex.pop(drop, None)
    torch.save(alex, folder / "alexnet.pth")
    torch.save(lin, folder / "alex.pth")
    return folder / "alexnet.pth", folder / "alex.pth"


def test_lpips_zero_for_identical_and_growing_with_noise(tmp_path):
    net = LPIPS.from_files(*lpips_files(tmp_path))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    noisy = [np.clip(img + rng.normal(0, s, img.shape), 0, 255).astype(np.uint8) for s in (5, 40)]
    assert net.distance(img, img) == 0
    small, large = (net.distance(img, n) for n in noisy)
    assert 0 < small < large
    assert net.distance(noisy[1], img) == pytest.approx(large, rel=1e-5)  # symmetric
    with pytest.raises(InputError, match="missing keys: features.3.weight"):
        LPIPS.from_files(*lpips_files(tmp_path, drop="features.3.weight"))


def test_mfcc_equals_python_speech_features():
    audio, rate = sf.read(FIXTURES / "speech_3s.wav", dtype="float32")
    reference = np.load(FIXTURES / "speech_3s_mfcc_psf.npy")  # python_speech_features.mfcc(int16 samples, 16000)
    np.testing.assert_allclose(mfcc(audio * 32768.0, rate), reference, rtol=1e-5, atol=1e-4)


def syncnet_file(path, drop: str | None = None, extra: str | None = None):
    """Random weights in the layout of syncnet_python's syncnet_v2.model (no BatchNorm counters)."""
    torch.manual_seed(0)
    state = {k: v for k, v in SyncNet().state_dict().items() if not k.endswith("num_batches_tracked")}
    state.pop(drop, None)
    if extra:
        state[extra] = torch.zeros(1)
    torch.save(state, path)
    return path


def test_syncnet_loads_strictly_and_scores_a_real_clip(tmp_path, landmarker):
    net = SyncNet.from_file(syncnet_file(tmp_path / "s.model"))
    with pytest.raises(InputError, match="missing keys: netcnnlip.0.weight"):
        SyncNet.from_file(syncnet_file(tmp_path / "bad.model", drop="netcnnlip.0.weight"))
    with pytest.raises(InputError, match="unexpected keys: extra.weight"):
        SyncNet.from_file(syncnet_file(tmp_path / "bad.model", extra="extra.weight"))
    clip = FIXTURES / "talk_4s.mp4"  # 4 s at 25 fps with its own speech
    from util.audio import load_audio

    scores = score_video(net, clip, load_audio(clip))
    assert math.isfinite(scores["lse_d"]) and scores["lse_d"] > 0 and scores["lse_c"] >= 0
    assert abs(scores["offset_frames"]) <= 15 and scores["windows"] == 95


def test_our_mouth_is_compared_with_a_driving_video_speakers_own(landmarker):
    clip = FIXTURES / "talk_4s.mp4"  # 4 s at 25 fps with its own speech
    pts, fps = track_video(clip)
    at_60 = np.stack([np.stack([np.interp(np.arange(int(len(pts) * 60 / fps)) / 60, np.arange(len(pts)) / fps,
                                          pts[:, i, k]) for k in range(3)], -1) for i in range(pts.shape[1])], 1)
    same = speaker_mouth_scores(clip, at_60, 60.0)  # the speaker's own mouth, at our rate
    assert same["opening_correlation_vs_speaker"] > 0.95 and same["speaker_frames"] == len(pts)
    late = speaker_mouth_scores(clip, np.roll(at_60, 30, axis=0), 60.0)  # half a second late
    assert late["opening_correlation_vs_speaker"] < same["opening_correlation_vs_speaker"] - 0.3
    short = speaker_mouth_scores(clip, at_60[:120], 60.0)  # a prediction of 2 s covers the first 50 frames
    assert short["speaker_frames"] == 50 and short["opening_correlation_vs_speaker"] > 0.95
    assert speaker_mouth_scores(FIXTURES / "speech_3s.wav", at_60, 60.0) == {}  # audio only: nothing to compare


def test_evaluate_script_bad_inputs(tmp_path, capsys):
    evaluate = load_script("evaluate")
    assert evaluate.main(["--id", "nobody", "--driving_audio", "x.wav", "--data_root", str(tmp_path)]) == 2
    assert "identity folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--id", "a", "--driving_audio", "x.wav", "--lpips_lin", "alex.pth"])
    assert "--lpips_alexnet and --lpips_lin go together" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ci
def test_quickstart_tiny_profile(tmp_path, landmarker, monkeypatch):
    dirs = ["--checkpoints_dir", str(tmp_path / "ckpt"), "--results_dir", str(tmp_path / "results"),
            "--data_root", str(tmp_path / "data"), "--config_dir", str(tmp_path / "config")]
    alexnet, lin = lpips_files(tmp_path)
    lpips = ["--lpips_alexnet", str(alexnet), "--lpips_lin", str(lin)]
    assert load_script("quickstart").main(["--profile", "tiny", *dirs, *lpips]) == 0
    out = tmp_path / "results" / "example"
    report = (out / "report.html").read_text()
    assert "side_by_side.mp4" in report and "Skipped metrics" in report
    metrics = json.loads((out / "metrics.json").read_text())
    for value in (metrics["renderer"]["psnr_db"], metrics["renderer"]["ssim"], metrics["audio_to_mouth"]["m_lmd_px"],
                  metrics["speed"]["render_fps"], metrics["renderer"]["lpips_alex"]):
        assert math.isfinite(value)
    assert "LPIPS" not in metrics["skipped_metrics"] and "renderer LPIPS" in report
    for key in ("sync_offset_ms_real", "sync_confidence_real", "mouth_psnr", "mouth_sharpness_ours"):
        assert math.isfinite(metrics[key]), key  # lipsync.py's measure (ours may be NaN untrained)
    assert {"sync_offset_ms_ours", "silence_opening_real", "silence_opening_ours"} <= set(metrics)
    assert "A/V offset, own measure" in report
    assert (out / "eng_12s" / "eng_12s.mp4").is_file() and (out / "side_by_side.mp4").is_file()
    mouths = read_yaml(tmp_path / "config" / "example.yaml")["model_params"]["Audio2Mouth"]["ckp_path"]
    assert "_150ms_distilled/" in mouths  # one model that learnt the average of the tiny profile's two
    assert metrics["training"]["Audio2Mouth"]["distilled_from"] == 2
    trained = {p: p.stat().st_mtime_ns for p in (tmp_path / "ckpt").rglob("*.pth")}
    exported = {p: p.stat().st_mtime_ns for p in (tmp_path / "ckpt").rglob("*.onnx")}
    assert sorted(p.name.split(".", 1)[1] for p in exported) == ["int8.onnx", "onnx"]  # for the live page
    meta = tmp_path / "data" / "example" / "meta.json"
    made = meta.stat().st_mtime_ns
    calibrations = []  # the config points at the reused pose network and holds its calibration: none again
    monkeypatch.setattr(motion, "calibrate_identity", lambda *a, **k: calibrations.append(a))
    assert "opening_correlation_vs_speaker" not in metrics["other_speaker"]  # eng_12s is speech alone
    talk = FIXTURES / "talk_4s.mp4"  # the second run is driven by a video: our mouth is compared with its speaker's
    assert load_script("quickstart").main(["--profile", "tiny", *dirs, "--driving_audio", str(talk)]) == 0
    assert calibrations == []
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ckpt").rglob("*.pth")} == trained  # nothing retrained
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ckpt").rglob("*.onnx")} == exported  # nor re-exported
    assert meta.stat().st_mtime_ns == made  # nor preprocessed again
    again = json.loads((out / "metrics.json").read_text())
    assert again["audio_to_mouth"] == metrics["audio_to_mouth"]  # the same networks, the same numbers
    assert again["renderer"]["psnr_db"] == metrics["renderer"]["psnr_db"]
    assert again["other_speaker"]["speaker_frames"] >= 95  # about all of the 4 s at 25 fps
    assert -1 <= again["other_speaker"]["opening_correlation_vs_speaker"] <= 1
    assert "our mouth opening vs the speaker's own" in (out / "report.html").read_text()


def test_quickstart_spends_the_renderer_budget_in_whole_epochs(identity, tmp_path):
    from datasets import create_dataset
    from options.train_options import TrainOptions

    quickstart = load_script("quickstart")
    common = ["--model", "feature2face", "--dataroot", str(identity), "--name", "f2f", "--checkpoints_dir",
              str(tmp_path), "--gpu_ids", "-1"]
    batches = math.ceil(len(create_dataset(TrainOptions().parse([*common, "--batch_size", "2"], save=False),
                                           "train")) / 2)
    flags = ["--batch_size", "2", "--max_iters", str(7 * batches + batches // 2), "--lr", "1e-3"]
    out = quickstart.whole_epochs(common, flags)
    assert out == ["--batch_size", "2", "--max_iters", str(7 * batches), "--lr", "1e-3", "--n_epochs", "5",
                   "--n_epochs_decay", "2"]  # 7 whole epochs fit, the last 2 (a third) decaying
    short = ["--batch_size", "2", "--max_iters", str(batches - 1)]  # less than an epoch: kept, constant rate
    assert quickstart.whole_epochs(common, short) == [*short, "--n_epochs", "1", "--n_epochs_decay", "0"]
    assert not (tmp_path / "f2f").exists()  # reading the options wrote nothing
