"""`re2tal hub …`: one module per sub-command (push), assembled by `cli/app.py`."""
