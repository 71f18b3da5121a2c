"""focusvit.finetune."""
