"""Small helpers every layer uses: atomic file writes (:mod:`~core.util.files`) and progress
reporting (:mod:`~core.util.progress`)."""
