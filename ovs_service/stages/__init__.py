"""The stages: each saves one kind of state into a snapshot and restores it."""
