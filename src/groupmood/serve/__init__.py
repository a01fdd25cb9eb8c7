"""``groupmood serve``: an HTTP API and a web page over the same recognizer as ``groupmood predict``.

:func:`create_app` builds the FastAPI application (``GET /`` the page, ``POST /v1/predict``,
``GET /v1/health``, ``GET /v1/bundle``); :class:`ServeLimits` holds its limits. Importing this
package loads no model: the models are loaded once, when the application starts.
"""
from __future__ import annotations

from .app import ServeLimits, create_app, page_html

__all__ = ["ServeLimits", "create_app", "page_html"]
