"""MQTT in and out over one connection: event subscriptions and retained flag state.

Rules: aiomqtt has no reconnect of its own, so this loop reconnects with backoff, forever,
re-subscribing each time. Payloads go to the pipeline as they arrive (QoS 1: at least once;
with `clean_session: false` the broker keeps our subscriptions and queued messages across
reconnects). Publishing waits for the broker's acknowledgement and raises when there is no
connection, so the caller keeps the message in its outbox. Every aiomqtt call that waits
(connect, subscribe, publish) is followed by `honour_cancel` (cancel.py). At stop the loop
is gone and `publishing` lends the publisher a connection of its own for the drain: a clean
session under another id with no subscriptions, so nothing queued for the loop's own
session is taken (and lost) while the last flag states go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from urllib.parse import urlsplit

import aiomqtt

from rolloutd.adapters.backoff import Backoff
from rolloutd.adapters.cancel import honour_cancel
from rolloutd.config import MqttSource

log = logging.getLogger("rolloutd.mqtt")

PayloadHandler = Callable[[str, bytes], None]


class MqttUnavailable(Exception):
    """No connection to the broker right now."""


class MqttLink:
    def __init__(
        self,
        source: MqttSource,
        handle: PayloadHandler,
        on_state: Callable[[bool, str], None],  # (up, why not)
    ) -> None:
        self.source = source
        self.handle = handle
        self.on_state = on_state
        self.client: aiomqtt.Client | None = None
        self.backoff = Backoff()

    def _client(self, drain: float | None = None) -> aiomqtt.Client:
        """The loop's client; with `drain` (a connect timeout), a publishing-only one."""
        url = urlsplit(self.source.url)
        secure = url.scheme == "mqtts"
        tls: ssl.SSLContext | None = None
        if secure:
            tls = ssl.create_default_context(cafile=self.source.ca_file)
            if self.source.cert_file is not None:
                tls.load_cert_chain(self.source.cert_file, self.source.key_file)
        password = self.source.password.get_secret_value() if self.source.password else None
        return aiomqtt.Client(
            hostname=url.hostname or "127.0.0.1",
            port=url.port or (8883 if secure else 1883),
            identifier=self.source.client_id if drain is None else f"{self.source.client_id}-stop",
            username=self.source.username,
            password=password,
            tls_context=tls,
            clean_session=self.source.clean_session if drain is None else True,
            keepalive=30,
            timeout=drain,
        )

    async def run(self) -> None:
        while True:
            client = self._client()
            try:
                async with client:
                    honour_cancel()
                    self.client = client
                    for topic in self.source.topics:
                        await client.subscribe(topic, qos=self.source.qos)
                        honour_cancel()
                    self.on_state(True, "")
                    self.backoff.reset()
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, str):
                            payload = payload.encode()
                        elif not isinstance(payload, bytes | bytearray):
                            payload = b"" if payload is None else str(payload).encode()
                        self.handle(str(message.topic), bytes(payload))
            except aiomqtt.MqttError as exc:
                delay = self.backoff.next()
                log.warning("mqtt: %s; reconnecting in %.1fs", exc, delay)
                self.on_state(False, f"broker unavailable: {exc}")
            finally:
                self.client = None
            await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def publishing(self, connect_within: float) -> AsyncIterator[None]:
        """A connection for `publish` while the loop has none (the drain at stop), given up
        after `connect_within` seconds of trying: then `publish` raises as it would anyway."""
        if self.client is not None:
            yield
            return
        client = self._client(drain=max(connect_within, 0.01))
        try:
            async with asyncio.timeout(connect_within):
                await client.__aenter__()
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("mqtt: no connection to publish what is left: %s", exc or "timed out")
            yield
            return
        self.client = client
        try:
            yield
        finally:
            self.client = None
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def publish(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        """Publish (topic, payload, retain) at QoS 1, waiting for each acknowledgement."""
        client = self.client
        if client is None:
            raise MqttUnavailable("not connected")
        try:
            for topic, payload, retain in messages:
                await client.publish(topic, payload, qos=1, retain=retain, timeout=10)
                honour_cancel()
        except aiomqtt.MqttError as exc:
            raise MqttUnavailable(str(exc)) from exc
