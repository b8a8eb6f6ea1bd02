"""API keys, the keys file, the add-key CLI and quotas."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from captions.errors import ConfigError, QuotaExceeded, Unauthorized
from captions.quota import AudioMeter, QuotaLedger, period_key
from captions.store import StreamStatus, TranscriptStore
from captions.tenants import Authenticator, Limits, Tenant, add_key, hash_secret, load_tenants, verify_secret

# Cheap scrypt parameters: the tests check the logic, not the cost.
FAST = {"n": 2**8, "r": 8, "p": 1}


def test_hash_is_salted_and_verifies():
    first, second = hash_secret("ck_a_secret", **FAST), hash_secret("ck_a_secret", **FAST)
    assert first != second and "secret" not in first
    assert verify_secret("ck_a_secret", first)
    assert not verify_secret("ck_a_secreT", first)
    with pytest.raises(ConfigError):
        verify_secret("x", "md5$abc")


def keys_file(tmp_path: Path, limits: dict | None = None) -> tuple[Path, str]:
    path = tmp_path / "keys.yaml"
    key = add_key(path, "acme", limits)
    return path, key


def test_add_key_then_authenticate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path, key = keys_file(tmp_path, {"max_concurrent_streams": 3})
    assert key not in path.read_text()
    second = add_key(path, "acme")  # a second key keeps the first and the limits
    add_key(path, "globex")
    monkeypatch.setenv("CAPTIONS_KEYS_FILE", str(path))
    auth = Authenticator.from_file()
    assert auth.tenant_for_key(key).id == "acme"
    assert auth.tenant_for_key(second).id == "acme"
    assert auth.tenants["acme"].limits.max_concurrent_streams == 3
    assert auth.authenticate({"authorization": f"Bearer {key}"}, {}).id == "acme"
    assert auth.authenticate({}, {"key": key}).id == "acme"


@pytest.mark.parametrize(
    "headers, query",
    [
        ({}, {}),
        ({"authorization": "Basic abc"}, {}),
        ({"authorization": "Bearer "}, {}),
        ({"authorization": "Bearer nokey"}, {}),
        ({}, {"key": "ck_deadbeef_wrong"}),
        ({}, {"key": "ck_" + "x" * 300}),
    ],
)
def test_bad_keys_are_unauthorized(tmp_path: Path, headers: dict, query: dict):
    path, key = keys_file(tmp_path)
    auth = Authenticator(load_tenants(path))
    with pytest.raises(Unauthorized) as err:
        auth.authenticate(headers, query)
    assert err.value.code == "unauthorized"


def test_right_key_id_wrong_secret_is_unauthorized_and_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path, key = keys_file(tmp_path)
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    caplog.set_level(logging.DEBUG)
    auth = Authenticator(load_tenants(path))
    with pytest.raises(Unauthorized) as err:
        auth.authenticate({}, {"key": forged})
    assert forged not in str(err.value) and forged not in caplog.text and key not in caplog.text


def test_cli_prints_the_key_once_and_stores_its_hash(tmp_path: Path):
    path = tmp_path / "keys.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "captions.tenants", "add-key", "--file", str(path), "--tenant", "acme",
         "--audio-minutes-per-period", "30", "--period", "day"],
        capture_output=True, text=True, check=True,
    )
    key = out.stdout.strip()
    assert key.startswith("ck_") and key not in path.read_text()
    tenant = Authenticator(load_tenants(path)).tenant_for_key(key)
    assert tenant.limits == Limits(max_concurrent_streams=2, audio_minutes_per_period=30.0, period="day")
    assert oct(path.stat().st_mode)[-3:] == "600"


@pytest.mark.parametrize(
    "doc",
    [
        "[]",
        "tenants: [{id: ''}]",
        "tenants: [{id: a}, {id: a}]",
        "tenants: [{id: a, limits: {period: year}}]",
        "tenants: [{id: a, limits: {max_concurrent_streams: -1}}]",
        "tenants: [{id: a, limits: {colour: red}}]",
        "tenants: [{id: a, keys: [{id: k}]}]",
        "tenants: [{id: a, keys: [{id: k, hash: 'scrypt$x$8$1$abc$def'}]}]",
        "tenants: [",
    ],
)
def test_invalid_keys_files_are_rejected(tmp_path: Path, doc: str):
    path = tmp_path / "keys.yaml"
    path.write_text(doc)
    with pytest.raises(ConfigError):
        load_tenants(path)


def test_missing_keys_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="CAPTIONS_KEYS_FILE"):
        load_tenants(tmp_path / "absent.yaml")


def test_json_keys_file(tmp_path: Path):
    path = tmp_path / "keys.json"
    path.write_text('{"tenants": [{"id": "acme", "limits": {"period": "hour"}, "keys": []}]}')
    assert load_tenants(path)["acme"].limits.period == "hour"


# ------------------------------------------------------------------ quotas
@pytest.fixture
def ledger(db_url: str) -> QuotaLedger:
    # On SQLite and on a live PostgreSQL: the counts are that database's atomic statements.
    return QuotaLedger(TranscriptStore(db_url))


def test_period_keys():
    t = 1764090000.0  # 2025-11-25T17:00:00Z
    assert (period_key("month", t), period_key("day", t), period_key("hour", t)) == (
        "2025-11", "2025-11-25", "2025-11-25T17"
    )


def test_concurrent_stream_quota(ledger: QuotaLedger):
    tenant = Tenant("acme", Limits(max_concurrent_streams=1))
    ledger.open_stream(tenant, "s1", None)
    with pytest.raises(QuotaExceeded) as err:
        ledger.open_stream(tenant, "s2", None)
    assert err.value.code == "quota_exceeded"
    ledger.close_stream(tenant, "s1", StreamStatus.ENDED)
    ledger.open_stream(tenant, "s2", None)


def test_audio_meter_charges_in_blocks_and_refunds(ledger: QuotaLedger):
    tenant = Tenant("acme", Limits(audio_minutes_per_period=1.0))  # 60 s
    ledger.open_stream(tenant, "s1", None)
    meter = AudioMeter(ledger, tenant, "s1", block_s=10.0)
    meter.add(0.5)
    assert ledger.used_s(tenant) == 10.0  # charged a block ahead
    for _ in range(99):
        meter.add(0.5)
    assert ledger.used_s(tenant) == 50.0
    meter.close()
    assert ledger.used_s(tenant) == pytest.approx(50.0)


def test_audio_quota_is_exact_at_the_limit_and_shared_by_streams(ledger: QuotaLedger):
    tenant = Tenant("acme", Limits(max_concurrent_streams=5, audio_minutes_per_period=0.5))  # 30 s
    ledger.open_stream(tenant, "a", None)
    ledger.open_stream(tenant, "b", None)
    first, second = AudioMeter(ledger, tenant, "a", block_s=10.0), AudioMeter(ledger, tenant, "b", block_s=10.0)
    for _ in range(20):
        first.add(1.0)  # 20 s
    for _ in range(10):
        second.add(1.0)  # 10 s: exactly the limit, although the last block did not fit whole
    with pytest.raises(QuotaExceeded):
        second.add(0.1)
    with pytest.raises(QuotaExceeded):
        first.add(0.1)
    first.close(), second.close()
    assert ledger.used_s(tenant) == pytest.approx(30.0)


def test_usage_and_rejections_are_counted_per_tenant(ledger: QuotaLedger):
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    tenant = Tenant("metered", Limits(max_concurrent_streams=1, audio_minutes_per_period=0.1))  # 6 s
    # The counters are process-wide and this test runs once per database: compare with before.
    before = sample("captions_rejections_total", tenant="metered", reason="concurrent_streams")
    audio_before = sample("captions_audio_seconds_total", tenant="metered")
    ledger.open_stream(tenant, "m1", None)
    with pytest.raises(QuotaExceeded):
        ledger.open_stream(tenant, "m2", None)
    meter = AudioMeter(ledger, tenant, "m1")
    meter.add(4.0)
    with pytest.raises(QuotaExceeded):
        meter.add(4.0)
    assert sample("captions_streams_opened_total", tenant="metered") >= 1.0
    assert sample("captions_audio_seconds_total", tenant="metered") == audio_before + 4.0
    assert sample("captions_rejections_total", tenant="metered", reason="concurrent_streams") == before + 1
    assert sample("captions_rejections_total", tenant="metered", reason="audio_minutes") >= 1.0


def test_authenticator_picks_up_keys_added_to_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path, first = keys_file(tmp_path)
    auth = Authenticator.from_file(path, reload_s=0.0)
    second = add_key(path, "globex")
    assert auth.tenant_for_key(second).id == "globex"
    path.write_text("tenants: [")  # a broken edit keeps the last valid keys
    with caplog.at_level(logging.ERROR):
        assert auth.tenant_for_key(first).id == "acme"
    assert "keeping the previous keys" in caplog.text


def test_an_accepted_key_is_remembered_until_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path, key = keys_file(tmp_path)
    auth = Authenticator.from_file(path, reload_s=0.0)
    assert auth.tenant_for_key(key).id == "acme"
    calls = []
    monkeypatch.setattr("captions.tenants.verify_secret", lambda *a: calls.append(a) or False)
    assert auth.tenant_for_key(key).id == "acme" and not calls  # no scrypt for a key already accepted
    with pytest.raises(Unauthorized):
        auth.tenant_for_key(key[:-1] + ("A" if key[-1] != "A" else "B"))  # a near miss is checked in full
    add_key(path, "globex")  # any change to the file: every key is checked afresh
    with pytest.raises(Unauthorized):
        auth.tenant_for_key(key)
