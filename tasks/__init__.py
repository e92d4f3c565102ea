"""Prefect tasks: the only place where side effects are wired to Prefect.

Arguments are plain ids and values; clients and sessions are built inside from settings.
"""
