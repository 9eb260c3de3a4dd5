"""Flag delivery: the variant names, the flagd document and the Unleash client API the
SDKs read (served by `adapters/delivery/`).
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, model_validator

from rolloutd.config.fields import Section, Text, invalid_at


class DeliveryVariants(Section):
    """The names of the two variants every delivered flag has (values true and false)."""

    enabled: Text = Field(
        "on",
        description=(
            "Name of the variant users in the rollout get (value true). Default on; quote "
            '"on" and "off" in YAML.'
        ),
    )
    disabled: Text = Field(
        "off", description="Name of the variant everyone else gets (value false). Default off."
    )

    @model_validator(mode="after")
    def _check_distinct(self) -> Self:
        if self.enabled == self.disabled:
            raise invalid_at("disabled", f"the two variants need different names: {self.enabled!r}")
        return self


class FlagdDelivery(Section):
    """A flagd flag-definition document of every driven flag."""

    file: Text | None = Field(
        None,
        description=(
            "Path of the flagd flag-definition file, written atomically on every flag change "
            "(for flagd's file sync and the providers' in-process file mode)."
        ),
    )
    http: bool = Field(
        False,
        description=(
            "Serve the document at GET /flagd/flags.json on the admin server (for flagd's HTTP "
            "sync), with ETag and If-None-Match."
        ),
    )

    @model_validator(mode="after")
    def _check_served(self) -> Self:
        if self.file is None and not self.http:
            raise invalid_at("file", "give a file, http: true, or both")
        return self


class UnleashDelivery(Section):
    """The Unleash client API on the admin server."""

    client_tokens: tuple[SecretStr, ...] = Field(
        min_length=1,
        description=(
            "Client tokens the Unleash SDKs send in their Authorization header (secrets: give "
            "them as ${VAR}); any other token is refused (401)."
        ),
    )

    @model_validator(mode="after")
    def _check_tokens(self) -> Self:
        for index, token in enumerate(self.client_tokens):
            if not token.get_secret_value().strip():
                raise invalid_at(f"client_tokens[{index}]", "an empty token would admit anyone")
        return self


class Delivery(Section):
    """Flag state delivered in the formats of the SDKs applications already use."""

    variants: DeliveryVariants = Field(
        DeliveryVariants(), description="Variant names of the delivered flags."
    )
    flagd: FlagdDelivery | None = Field(
        None, description="OpenFeature / flagd: a flag-definition file and/or HTTP document."
    )
    unleash: UnleashDelivery | None = Field(
        None,
        description=(
            "Unleash SDKs: GET /api/client/features, and their register and metrics posts "
            "(exposures per cohort)."
        ),
    )
