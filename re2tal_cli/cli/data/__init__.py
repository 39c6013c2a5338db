"""`re2tal data …`: one module per sub-command (convert, features, synth, info), assembled by `cli/app.py`."""
