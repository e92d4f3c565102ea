"""The bottom layer: settings, errors, item outcomes, and the reader of untrusted JSON text.

It imports nothing of ``db``, ``batchlib``, ``tasks`` or ``flows``, and never ``prefect``;
everything else may import it.
"""
