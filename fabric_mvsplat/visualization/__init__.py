"""Visualisation helpers: camera trajectories for validation/test videos, image layouts."""
