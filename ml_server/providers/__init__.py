"""Provider adapters behind one small interface (see providers/base.py)."""
