"""Blueprints: triggers, orchestrators and activities. Thin: parse, call ``shared/``, respond."""
