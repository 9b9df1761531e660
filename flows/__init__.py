"""Thin Prefect flows and tasks over `cocu_core`: orchestration only, no algorithms."""
