"""Evaluation of a trained identity (scripts/evaluate.py, the quickstart's report): evaluate.py drives
the identity and measures it, metrics.py (PSNR, SSIM, mouth distance, pose statistics), lipsync.py (a
lip-sync measure that needs no weights: A/V offset and confidence, mouth in silence, mouth sharpness), syncnet.py
(LSE-D / LSE-C from user-supplied weights), lpips.py (LPIPS from user-supplied weights), report.py."""
