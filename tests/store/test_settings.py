"""API keys come from the environment as a comma-separated list or a JSON list."""

from __future__ import annotations

import pytest

from hwctl.settings import Settings


@pytest.mark.parametrize(
    ("environment", "keys"),
    [("k1", ["k1"]), ("k1, k2", ["k1", "k2"]), ('["k1", "k,2"]', ["k1", "k,2"]), ("", [])],
)
def test_api_keys_accept_a_comma_separated_or_json_list(
    monkeypatch: pytest.MonkeyPatch, environment: str, keys: list[str]
) -> None:
    monkeypatch.setenv("HWCTL_API_KEYS", environment)
    assert Settings(_env_file=None).api_keys == keys  # type: ignore[call-arg]
