"""Database models, engine and key store."""
