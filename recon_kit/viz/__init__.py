"""Notebook visualisation helpers (k3d scenes, matplotlib panels, widgets)."""
