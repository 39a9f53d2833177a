"""Request fingerprints and idempotency-key checks."""

from __future__ import annotations

import pytest

from sous_core.submissions import SubmissionRefused, check_idempotency_key, request_fingerprint


def test_fingerprint_ignores_key_order_but_not_values() -> None:
    a = request_fingerprint("fetch", {"url": "https://a/", "x": 1}, None)
    assert a == request_fingerprint("fetch", {"x": 1, "url": "https://a/"}, None)
    assert a != request_fingerprint("fetch", {"url": "https://b/", "x": 1}, None)
    assert a != request_fingerprint("email", {"url": "https://a/", "x": 1}, None)
    assert a != request_fingerprint("fetch", {"url": "https://a/", "x": 1}, "https://hook/")


@pytest.mark.parametrize("key", ["", "k" * 256, "tab\there", "nul\x00"])
def test_bad_idempotency_keys_are_400(key: str) -> None:
    with pytest.raises(SubmissionRefused) as caught:
        check_idempotency_key(key)
    assert caught.value.status == 400


def test_good_idempotency_keys_pass_through() -> None:
    assert check_idempotency_key(None) is None
    assert check_idempotency_key("order-42") == "order-42"
