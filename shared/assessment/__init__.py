"""Patch assessment: running it per machine, recording what is missing, the light check, read views."""
