"""Bootstrap a Prefect server for the batch operations, and serve every deployment locally."""
