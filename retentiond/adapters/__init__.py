"""Adapters: the one interface in base.py, the built-ins, and the registry."""
