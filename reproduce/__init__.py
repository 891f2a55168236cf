"""Headless reproduction: ``python -m reproduce`` runs ``notebooks/NN_*.ipynb`` with papermill.

See :mod:`reproduce.runner` (the two paths: a fresh run into ``results/runs/`` followed by the
check, and the in-place regeneration of the committed ``results/<profile>``; the manifest),
:mod:`reproduce.check` (the reproduction check), :mod:`reproduce.progress` (what a person sees
while a notebook runs), :mod:`reproduce.report` (``REPORT.md``) and ``profiles.yaml`` (smoke /
cpu / paper parameters).
"""
