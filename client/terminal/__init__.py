"""The terminal front ends of `vtwatch` (`watch`, `follow`, `demo`): programs built on the
library, kept out of its importable API (they print, and exit with a status)."""
