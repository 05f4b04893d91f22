"""Thin Prefect wrappers around pipeline_lib. No logic lives here."""
