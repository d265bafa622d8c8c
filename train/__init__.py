"""The trainer (train/imagenet.py is its entry point; docs/training.md, the manual)."""
