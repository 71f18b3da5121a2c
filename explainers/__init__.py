"""focusvit.explainers."""
