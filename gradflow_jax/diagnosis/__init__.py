"""Host-only rules that turn measurements into findings with fixes."""
