"""The monitored training step in a user's own loop, and its writers."""
