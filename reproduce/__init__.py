"""Headless reproduction: ``python -m reproduce`` runs ``notebooks/NN_*.ipynb`` with papermill.

See :mod:`reproduce.runner` (execution and manifest), :mod:`reproduce.report` (``REPORT.md``)
and ``profiles.yaml`` (smoke / cpu / paper parameters).
"""
