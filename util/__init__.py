"""Shared helpers: audio, landmarks, geometry, manifold projection, video I/O, checkpoints, logging."""
