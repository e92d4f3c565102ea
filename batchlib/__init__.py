"""Prefect-free domain code: settings, errors, HTTP clients, locks, item handlers.

Nothing in this package imports ``prefect``; it is tested in milliseconds.
"""
