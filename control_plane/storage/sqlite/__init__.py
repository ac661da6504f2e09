"""The embedded store: every storage protocol on one SQLite file (see ``db.py``)."""
