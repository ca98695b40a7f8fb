"""Exchange formats with other tools (aihwkit)."""
