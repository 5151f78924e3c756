"""Test helpers: wait on conditions with deadlines, find or start services."""
