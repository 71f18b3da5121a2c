"""focusvit.data."""
