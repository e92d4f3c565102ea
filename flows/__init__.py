"""Prefect flows: one thin module per batch type, plus the maintenance flows."""
