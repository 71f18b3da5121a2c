"""focusvit.prompting."""
