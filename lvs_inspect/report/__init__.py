"""Renderers: text, JSON and the other report formats, for people and for CI."""
