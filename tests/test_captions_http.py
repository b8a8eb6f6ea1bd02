"""HTTP routes (TestClient, no Ray): transcripts, viewer tokens, events, the page, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

import captions.http
from captions.fanout import CaptionHub
from captions.http import caption_routes
from captions.store import StreamStatus, TranscriptStore
from captions.tenants import Authenticator, Limits, Tenant, hash_secret

ACME_KEY = "ck_acme0001_secret-acme"
GLOBEX_KEY = "ck_globex01_secret-globex"


@pytest.fixture
def env(tmp_path: Path):
    store = TranscriptStore(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    fast = {"n": 2**8, "r": 8, "p": 1}
    auth = Authenticator(
        {
            "acme": Tenant("acme", Limits(), {"acme0001": hash_secret(ACME_KEY, **fast)}),
            "globex": Tenant("globex", Limits(), {"globex01": hash_secret(GLOBEX_KEY, **fast)}),
        }
    )
    hub = CaptionHub()
    client = TestClient(Starlette(routes=caption_routes(store, auth, hub)))
    store.open_stream("acme", "s1", "en", 5)
    store.append_words("acme", "s1", 0, [("hello", 0.0, 0.5, False), ("world", 0.5, 1.0, True)])
    return store, hub, client


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def sse_events(client: TestClient, url: str) -> list[dict]:
    with client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


def test_transcript_formats(env):
    store, _, client = env
    doc = client.get("/v1/streams/s1/transcript.json", headers=bearer(ACME_KEY)).json()
    assert (doc["stream_id"], doc["status"], doc["language"], doc["text"]) == ("s1", "open", "en", "hello world")
    vtt = client.get(f"/v1/streams/s1/transcript.vtt?key={ACME_KEY}")
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.text == "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhello world\n"
    srt = client.get("/v1/streams/s1/transcript.srt", headers=bearer(ACME_KEY))
    assert srt.text == "1\n00:00:00,000 --> 00:00:01,000\nhello world\n\n"
    assert client.get("/v1/streams/s1/transcript.txt", headers=bearer(ACME_KEY)).json()["error"]["code"] == (
        "bad_request"
    )


def test_other_tenant_gets_unknown_stream_like_a_missing_one(env):
    _, _, client = env
    theirs = client.get("/v1/streams/s1/transcript.json", headers=bearer(GLOBEX_KEY))
    missing = client.get("/v1/streams/nope/transcript.json", headers=bearer(GLOBEX_KEY))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "unknown_stream"
    assert client.post("/v1/streams/s1/viewer-tokens", headers=bearer(GLOBEX_KEY)).status_code == 404
    assert client.get("/v1/streams/s1/events", headers=bearer(GLOBEX_KEY)).status_code == 404


@pytest.mark.parametrize("headers", [{}, bearer("ck_acme0001_wrong"), {"Authorization": "Token x"}])
def test_missing_or_wrong_key_is_unauthorized(env, headers):
    _, _, client = env
    for response in (
        client.get("/v1/streams/s1/transcript.vtt", headers=headers),
        client.post("/v1/streams/s1/viewer-tokens", headers=headers),
        client.get("/v1/streams/s1/events", headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


def test_viewer_token_reads_its_stream_only(env):
    store, _, client = env
    store.open_stream("acme", "s2", None, 5)
    created = client.post("/v1/streams/s1/viewer-tokens", headers=bearer(ACME_KEY), json={"ttl_s": 60})
    assert created.status_code == 201
    token = created.json()["token"]
    assert created.json()["viewer_path"] == f"/static/viewer.html?stream=s1&token={token}"
    assert client.get(f"/v1/streams/s1/transcript.json?token={token}").json()["text"] == "hello world"
    other = client.get(f"/v1/streams/s2/transcript.json?token={token}")
    assert other.status_code == 401 and other.json()["error"]["code"] == "unauthorized"
    # A viewer token cannot mint more tokens.
    assert client.post(f"/v1/streams/s1/viewer-tokens?token={token}").status_code == 401


def test_expired_viewer_token(env):
    store, _, client = env
    token = store.create_viewer_token("acme", "s1", ttl_s=1, now=0.0)  # expired long ago
    response = client.get(f"/v1/streams/s1/events?token={token}")
    assert response.status_code == 401 and response.json()["error"]["code"] == "token_expired"


@pytest.mark.parametrize(
    "body, headers",
    [
        (b"x" * 5000, {}),
        (b"{not json", {}),
        (b"[1, 2]", {}),
        (b'{"ttl_s": "long"}', {}),
        (b'{"ttl_s": 999999}', {}),
        (b'{"ttl_s": -1}', {}),
        (b'{"ttl_s": ' + b"[" * 2000 + b"]" * 2000 + b"}", {}),  # deeper than json's recursion limit
    ],
)
def test_malformed_or_oversized_token_requests(env, body, headers):
    _, _, client = env
    response = client.post("/v1/streams/s1/viewer-tokens", headers={**bearer(ACME_KEY), **headers}, content=body)
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"
    # Nothing else is affected.
    assert client.get("/v1/streams/s1/transcript.json", headers=bearer(ACME_KEY)).status_code == 200


@pytest.mark.parametrize("stream_id", ["x" * 100, "%2e%2e", "caf%C3%A9", "%C2%B2", "s1%27%3B%20DROP%20TABLE%20streams"])
def test_malformed_stream_id(env, stream_id: str):
    """Only [A-Za-z0-9_-], as the message says: str.isalnum() alone also lets 'é' and '²' through."""
    _, _, client = env
    response = client.get(f"/v1/streams/{stream_id}/transcript.json", headers=bearer(ACME_KEY))
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"


def test_no_route_and_wrong_method_are_json_errors(tmp_path: Path):
    """With the ingest's handler, Starlette's own 404/405 have the same JSON shape as every other error."""
    from starlette.exceptions import HTTPException

    from captions.http import http_exception_response

    store = TranscriptStore(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    app = Starlette(routes=caption_routes(store, Authenticator({}), CaptionHub()),
                    exception_handlers={HTTPException: http_exception_response})
    client = TestClient(app)
    # %2F is decoded before routing: the id holds '/', so no route matches.
    missing = client.get("/v1/streams/..%2F..%2Fetc/transcript.json")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    wrong = client.get("/v1/streams/s1/viewer-tokens")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (405, "method_not_allowed")
    assert "POST" in wrong.headers["allow"]


def test_events_replay_a_stream_published_here(env):
    _, hub, client = env
    hub.open("s1")
    hub.publish("s1", {"type": "words", "words": [{"text": "hello", "start": 0.0, "end": 0.5}]})
    hub.publish("s1", {"type": "partial", "text": "wor"})
    hub.publish("s1", {"type": "final", "session_id": "s1", "text": "hello world", "words": []})
    events = sse_events(client, f"/v1/streams/s1/events?key={ACME_KEY}")
    assert [e["type"] for e in events] == ["words", "final"]  # the partial was superseded by the final


def test_events_of_a_stream_published_elsewhere_come_from_the_database(env, monkeypatch):
    store, _, client = env
    monkeypatch.setattr(captions.http, "POLL_S", 0.01)
    token = store.create_viewer_token("acme", "s1", ttl_s=60)
    with client.stream("GET", f"/v1/streams/s1/events?token={token}") as response:
        lines = (json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:"))
        first = next(lines)
        assert [w["text"] for w in first["words"]] == ["hello", "world"]
        # Another replica commits a word and ends the stream.
        store.append_words("acme", "s1", 2, [("again", 1.0, 1.4, False)])
        store.close_stream("acme", "s1", StreamStatus.ENDED)
        rest = list(lines)
    assert [w["text"] for e in rest if e["type"] == "words" for w in e["words"]] == ["again"]
    assert rest[-1]["type"] == "final" and rest[-1]["text"] == "hello world again"


def test_page_and_static_files_are_served(env):
    _, _, client = env
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/static/index.html").status_code == 200
    assert client.get("/static/../http.py").status_code == 404
