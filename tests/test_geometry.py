"""Pose conventions, projection, landmark post-processing and the feature map."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT

from models.runtime import postprocess
from models.runtime.postprocess import load_pose_file
from models.runtime.settings import MouthSettings, runtime_settings
from models.synthetic import synthetic_face
from util.errors import InputError
from util.geometry import euler_to_matrix, matrix_to_euler, project_landmarks
from util.io import read_yaml
from util.landmarks import EYES, FACE_POLYLINES, LOWER_INNER_LIP, UPPER_INNER_LIP, feature_map


def test_euler_round_trip_and_order():
    rng = np.random.default_rng(0)
    angles = rng.uniform([-60, -60, -60], [60, 60, 60], (50, 3))
    r = euler_to_matrix(angles)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    np.testing.assert_allclose(matrix_to_euler(r), angles, atol=1e-9)
    rz = euler_to_matrix(np.array([0.0, 0.0, 90.0]))
    np.testing.assert_allclose(rz @ [1, 0, 0], [0, 1, 0], atol=1e-12)  # R = Rz Ry Rx: roll about z


def test_projection_pinhole():
    k = np.array([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]])
    pts = np.array([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]])
    uv = project_landmarks(pts, np.array([[180.0, 0, 0]]), np.array([[0.0, 0, 10]]), 2.0, k)
    # rot_x 180 turns the face's y-up into the image's y-down; scale 2 doubles offsets.
    np.testing.assert_allclose(uv[0], [[50, 50], [70, 50], [50, 30]], atol=1e-9)


def test_lip_intersection_fix_per_frame():
    face = synthetic_face(np.random.default_rng(0))
    pts = np.repeat(face[None], 3, 0)
    pts[1, LOWER_INNER_LIP, 1] = pts[1, UPPER_INNER_LIP, 1] + 0.04  # frame 1: lips cross by 0.04
    out = postprocess.fix_lip_intersection(pts)
    np.testing.assert_array_equal(out[[0, 2]], pts[[0, 2]])  # untouched frames
    np.testing.assert_allclose(out[1, UPPER_INNER_LIP, 1], out[1, LOWER_INNER_LIP, 1])
    np.testing.assert_allclose(out[1, 47:52, 1] - pts[1, 47:52, 1], 0.02)  # raised by the half gap


def test_mouth_faces_amplify_lips_keep_jaw_and_replay_eyes():
    rng = np.random.default_rng(0)
    mean = synthetic_face(rng)
    tracked = mean[None] + rng.normal(0, 0.01, (20, 73, 3))
    assets = SimpleNamespace(mean_pts3d=mean, tracked_pts3d=tracked)
    disp = np.zeros((5, 25, 3))
    disp[:, 7, 1] = -0.01  # mouth index 7 = point 46 (the first lip point), y
    disp[:, 0, 1] = 0.02  # mouth index 0 = point 4 (the first jaw point), y
    base = mean + 1.0  # the non-mouth points come from the base shape
    mouth = MouthSettings(frame_future=18, sigma=0.0, smooth_lookahead=2, amp_gains=(2.0, 3.0, 4.0), use_jaw=True)
    out = postprocess.mouth_faces(disp, assets, base, mouth, first_frame=12)
    np.testing.assert_allclose(out[:, 46, 1] - mean[46, 1], -0.03)  # lips: y gain 3
    np.testing.assert_allclose(out[:, 4, 1] - mean[4, 1], 0.02)  # jaw: not amplified
    np.testing.assert_allclose(out[:, 0], base[None, 0].repeat(5, 0))  # contour from the base
    # eyes replay the tracked frames cyclically from frame 10: frames 12..16 -> 10 + (12..16 % 10)
    np.testing.assert_allclose(out[:, EYES], tracked[[12, 13, 14, 15, 16]][:, EYES])
    no_jaw = postprocess.mouth_faces(disp, assets, base, dataclasses.replace(mouth, use_jaw=False), first_frame=0)
    np.testing.assert_allclose(no_jaw[:, 4], base[None, 4].repeat(5, 0))


@pytest.mark.parametrize("amp,gains", [(["XYZ", 2, 3, 4], (2, 3, 4)), (["XY", 2, 3], (2, 3, 1)),
                                       (["LowerMore", 1], None), (["XYZ", 1, 2], None), (["XY", "a", 1], None)])
def test_lip_gains_from_the_config(amp, gains):
    cfg = read_yaml(ROOT / "config" / "default.yaml")
    cfg["model_params"]["Audio2Mouth"]["AMP"] = amp
    if gains is None:
        with pytest.raises(InputError, match="Audio2Mouth.AMP"):
            runtime_settings(cfg, {}, {})
    else:
        assert runtime_settings(cfg, {}, {}).mouth.amp_gains == gains


def test_feature_map_draws_face_and_survives_bad_points():
    face = synthetic_face(np.random.default_rng(0))
    uv = face[:, :2] * [40, -40] + 64
    img = feature_map(uv, None, 128)
    assert img.dtype == np.uint8 and set(np.unique(img)) == {0, 255}
    for seq in FACE_POLYLINES:  # every drawn point lies on a line
        for i in seq:
            x, y = int(uv[i, 0]), int(uv[i, 1])
            assert img[y - 1 : y + 2, x - 1 : x + 2].max() == 255
    bad = uv.copy()
    bad[3] = [np.nan, np.inf]
    feature_map(bad, np.full((18, 2), 1e12), 128)


def test_pose_file_formats(tmp_path):
    poses = np.arange(24, dtype=float).reshape(4, 6)
    np.save(tmp_path / "p.npy", poses)
    np.savetxt(tmp_path / "p.csv", poses, delimiter=",")
    np.savez(tmp_path / "fit.npz", rot_angles=poses[:, :3], trans=poses[:, 3:, None])
    for name in ("p.npy", "p.csv", "fit.npz"):
        rot, trans = load_pose_file(tmp_path / name, 9)
        assert rot.shape == (9, 3) and trans.shape == (9, 3)
        np.testing.assert_array_equal(rot[:, 0], [0, 6, 12, 18, 12, 6, 0, 6, 12])  # ping-pong loop
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    with pytest.raises(InputError, match="expected shape Nx6"):
        load_pose_file(tmp_path / "bad.txt", 5)
