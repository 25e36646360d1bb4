"""What every route shares: the settings, the repository, the metrics and the request limits.

A module of its own so that route modules beside :mod:`modelyard.serving.app` (the page, the
OpenAPI document, the live figures) take the same state without importing the app.
"""

from __future__ import annotations

import time

from modelyard.config import ServeConfig
from modelyard.serving.prometheus import ServerMetrics
from modelyard.serving.protocol import Limits
from modelyard.serving.repository import ModelRepository


class ServerState:
    """Everything the routes share: settings, repository, metrics, limits."""

    def __init__(self, repo: ModelRepository, settings: ServeConfig, metrics: ServerMetrics):
        self.repo = repo
        self.settings = settings
        self.metrics = metrics
        self.limits = Limits(max_texts=settings.max_texts, max_text_chars=settings.max_text_chars)
        self.started = time.time()
