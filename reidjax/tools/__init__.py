"""Command-line tools (``python -m reidjax.tools.<name>``)."""
