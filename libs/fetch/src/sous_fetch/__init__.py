"""SSRF-safe HTTP for the workers: fetching URLs and POSTing webhooks (not for the API)."""
