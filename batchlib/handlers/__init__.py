"""Item handlers, one module per batch type; each module registers its type when imported, and
``batchlib.batch_types`` imports every module of this package (a new type is a new module here)."""
