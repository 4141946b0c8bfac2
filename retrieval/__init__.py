"""retrieval: features from trained networks, FAISS indexes, search, metrics, evaluation and the CLI."""
