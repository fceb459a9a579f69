"""One module per model family; each defines ENTRIES (a list of ModelSpec)."""
