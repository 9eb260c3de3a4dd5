"""The alert routes: PagerDuty, Slack, Alertmanager and plain webhooks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    SecretStr,
)

from rolloutd.config.durations import Duration, PositiveDuration
from rolloutd.config.fields import HttpUrl, Name, Section, Severity, Text


class _Alert(Section):
    name: Name = Field(description="Unique notifier name.")
    # None lets every severity / rollout through; an empty list would silence the notifier.
    severities: Annotated[tuple[Severity, ...], Field(min_length=1)] | None = Field(
        None, description="Only alerts of these severities (default: all)."
    )
    rollouts: Annotated[tuple[Name, ...], Field(min_length=1)] | None = Field(
        None, description="Only alerts of these rollouts (default: all)."
    )
    send_resolved: bool = Field(
        True, description="Also notify when a trigger resolves. Default true."
    )
    timeout: PositiveDuration = Field(
        10.0, description="Timeout of one delivery attempt. Default 10s."
    )
    # Alerts of one rollout arriving within group_wait go out as one notification; 0: off.
    group_wait: Duration = Field(
        0.0,
        description=(
            "Alerts of one rollout arriving within this long go out as one notification; 0 "
            "(default): off."
        ),
    )
    # A still-firing alert is sent again this often; 0: never.
    repeat_interval: Duration = Field(
        4 * 3600.0,
        description="A still-firing alert is sent again this often; 0: never. Default 4h.",
    )

    def accepts(self, rollout: str, severity: str) -> bool:
        """Whether this notifier wants an alert; an absent filter lets everything through."""
        return (self.rollouts is None or rollout in self.rollouts) and (
            self.severities is None or severity in self.severities
        )


class PagerDutyAlert(_Alert):
    type: Literal["pagerduty"] = Field(description="pagerduty: PagerDuty Events API v2.")
    routing_key: SecretStr = Field(
        description="Events API v2 integration key, a secret (give it as ${VAR}; never logged)."
    )
    url: HttpUrl = Field(
        "https://events.pagerduty.com/v2/enqueue",
        description="Events API endpoint. Default https://events.pagerduty.com/v2/enqueue.",
    )


class SlackAlert(_Alert):
    type: Literal["slack"] = Field(description="slack: a Slack incoming webhook.")
    webhook_url: SecretStr = Field(
        description="Incoming webhook URL, a secret (give it as ${VAR}; never logged)."
    )


class AlertmanagerAlert(_Alert):
    type: Literal["alertmanager"] = Field(
        description="alertmanager: Prometheus Alertmanager's API."
    )
    url: HttpUrl = Field(description="Alertmanager base URL.")
    headers: dict[Text, SecretStr] = Field(
        default_factory=dict,
        description="Extra HTTP headers (such as Authorization); values are secrets.",
    )


class WebhookAlert(_Alert):
    type: Literal["webhook"] = Field(description="webhook: each alert decision POSTed as JSON.")
    url: HttpUrl = Field(description="URL that receives each alert decision as JSON (POST).")
    headers: dict[Text, SecretStr] = Field(
        default_factory=dict,
        description="Extra HTTP headers (such as a shared secret); values are secrets.",
    )


Alert = Annotated[
    PagerDutyAlert | SlackAlert | AlertmanagerAlert | WebhookAlert, Field(discriminator="type")
]
