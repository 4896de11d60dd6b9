"""An example audiokd plugin package (see ``plugins.py``)."""
