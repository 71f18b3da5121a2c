"""focusvit.reports."""
