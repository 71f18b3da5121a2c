"""focusvit.configs."""
