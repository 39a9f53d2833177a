"""Sous client: submit background jobs over HTTP, follow them, download their output."""
