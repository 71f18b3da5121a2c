"""focusvit.baselines."""
