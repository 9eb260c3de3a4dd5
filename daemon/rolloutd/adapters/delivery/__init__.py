"""Flag delivery into the SDKs teams already use: OpenFeature/flagd and Unleash.

The board (`board.py`) holds the state of every driven flag as the pipeline committed it;
`flagd.py` and `unleash.py` render it in those formats; `routes.py` serves them on the
admin server; `metrics.py` counts it all. `build_delivery` wires them from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry

from rolloutd.adapters.delivery import flagd, unleash
from rolloutd.adapters.delivery.board import FlagBoard, FlagEntry, Render
from rolloutd.adapters.delivery.metrics import DeliveryCollector
from rolloutd.adapters.delivery.routes import FLAGD, UNLEASH, DeliveryRoutes, Submit
from rolloutd.config import Delivery

__all__ = ["DeliveryRoutes", "FlagBoard", "FlagEntry", "build_delivery"]


def build_delivery(
    config: Delivery,
    registry: CollectorRegistry,
    clock: Callable[[], float],
    submit: Submit,
) -> DeliveryRoutes | None:
    """The board and its routes; None when not configured. Seed the board with the state at
    start (`FlagBoard.seed`) once the pipeline has loaded it, before serving."""
    if config.flagd is None and config.unleash is None:
        return None
    renderers: dict[str, Render] = {}
    file = None
    if config.flagd is not None:
        renderers[FLAGD] = partial(flagd.document, variants=config.variants)
        if config.flagd.file is not None:
            file = (FLAGD, Path(config.flagd.file))
    tokens = None
    if config.unleash is not None:
        renderers[UNLEASH] = unleash.features
        tokens = [t.get_secret_value().encode() for t in config.unleash.client_tokens]
    board = FlagBoard(renderers, file, flagd.write_atomically)
    flagd_http = config.flagd is not None and config.flagd.http
    routes = DeliveryRoutes(board, flagd_http, tokens, submit, clock)
    registry.register(DeliveryCollector(routes))
    return routes
