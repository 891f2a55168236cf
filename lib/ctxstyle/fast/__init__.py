"""Opt-in speed paths, drop-in replacements for parts of :mod:`ctxstyle.method`, each tested against
the plain version: :mod:`.contextual` (eqs 4-10 in bounded memory with a closed-form backward;
``train(..., fast=True)``), :mod:`.inference` and :mod:`.nnpack` (CPU inference through NNPACK;
``Stylizer(..., fast=True)``). The method never imports this package."""
