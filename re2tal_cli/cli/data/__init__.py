"""`re2tal data …`: one module per sub-command (convert, synth, info), assembled by `cli/app.py`."""
