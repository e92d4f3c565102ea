"""Loopback stand-ins for external services (account platform, Kubo RPC) with fault knobs.

They implement the documented contracts (docs/) for tests, benchmarks and the demo;
they are never part of production.
"""
