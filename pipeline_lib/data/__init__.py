"""Ingestion, validation, calendar handling, splits, scaling and windows."""
