"""Shared plumbing for every entry point: configuration, atomic file writes, provenance."""
