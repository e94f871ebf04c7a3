"""Notebook display of result types without an upward import: a result type's
``_repr_html_`` asks this registry, and the modules that know how to draw it
(renderers, writers) register their formatter when they are imported
(``import gradflow_jax`` imports them all)."""

from __future__ import annotations

from typing import Callable

_FORMATTERS: dict[str, Callable] = {}


def register(kind: str, formatter: Callable) -> None:
  """``formatter(obj) -> str`` (HTML) draws results of ``kind``."""
  _FORMATTERS[kind] = formatter


def html(kind: str, obj) -> str | None:
  """HTML for ``obj``, or None (a notebook then shows its repr)."""
  formatter = _FORMATTERS.get(kind)
  return None if formatter is None else formatter(obj)
