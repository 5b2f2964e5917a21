"""Preprocessing: talking-head video(s) of one person -> an identity folder data/<id>/ in the release
layout (scripts/preprocess.py). run.py orchestrates; tracker.py (MediaPipe), tracks.py (pose, pose-free
landmarks, resampling), clips.py (clips, crops, shoulders), crop.py, shoulders.py, overlay.py, and
release.py (the identity-level files) do the steps."""
