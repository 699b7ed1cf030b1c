"""Adapters: implementations of the domain's ports (memory, filesystem; S3 and PostgreSQL later)."""
