"""Viewer fan-out: never blocks the publisher, cuts off slow viewers, replays to late joiners."""

from __future__ import annotations

import asyncio

from captions.fanout import CaptionHub


def words(*texts: str) -> dict:
    return {"type": "words", "words": [{"text": t, "start": 0.0, "end": 0.1} for t in texts]}


def run(coro):
    return asyncio.run(coro)


async def drain(sub) -> list[dict]:
    out = []
    while (event := await sub.next(timeout_s=1.0)) is not None:
        out.append(event)
    return out


def test_live_viewers_get_every_event_then_the_close():
    async def main():
        hub = CaptionHub()
        hub.open("s")
        a, b = hub.subscribe("s"), hub.subscribe("s")
        hub.publish("s", words("one"))
        hub.publish("s", {"type": "partial", "text": "tw"})
        hub.publish("s", {"type": "final", "text": "one two", "words": []})
        for sub in (a, b):
            assert [e["type"] for e in await drain(sub)] == ["words", "partial", "final"]
            assert sub.closed.code == "stream_ended"
        assert hub.viewers("s") == 0 and not hub.is_live("s")

    run(main())


def test_slow_viewer_is_cut_off_and_the_others_keep_everything():
    async def main():
        hub = CaptionHub(queue_limit=4)
        hub.open("s")
        slow, fast = hub.subscribe("s"), hub.subscribe("s")
        got = []
        for i in range(10):
            hub.publish("s", words(f"w{i}"))  # synchronous: the publisher never waits
            got.append(await fast.next(timeout_s=1.0))
        assert [e["words"][0]["text"] for e in got] == [f"w{i}" for i in range(10)]
        assert await slow.next(timeout_s=1.0) is None
        assert slow.closed.code == "slow_consumer"
        assert hub.viewers("s") == 1

    run(main())


def test_late_joiner_gets_recent_words_and_the_latest_partial():
    async def main():
        hub = CaptionHub(replay_events=3)
        hub.open("s")
        for i in range(5):
            hub.publish("s", words(f"w{i}"))
        hub.publish("s", {"type": "partial", "text": "old"})
        hub.publish("s", {"type": "partial", "text": "new"})
        late = hub.subscribe("s")
        first = [await late.next(timeout_s=1.0) for _ in range(4)]
        assert [e.get("text") or e["words"][0]["text"] for e in first] == ["w2", "w3", "w4", "new"]
        hub.publish("s", words("w5"))  # a committed word replaces the partial tail
        assert (await late.next(timeout_s=1.0))["words"][0]["text"] == "w5"
        assert hub.subscribe("s").queue.qsize() == 3

    run(main())


def test_joining_a_finished_stream_replays_and_closes():
    async def main():
        hub = CaptionHub(keep_finished=1)
        hub.publish("a", words("x"))
        hub.publish("a", {"type": "final", "text": "x", "words": []})
        sub = hub.subscribe("a")
        assert [e["type"] for e in await drain(sub)] == ["words", "final"]
        assert sub.closed.code == "stream_ended"
        hub.publish("b", {"type": "error", "code": "internal", "message": "boom"})
        assert hub.subscribe("a") is None  # forgotten: only keep_finished streams are kept
        assert hub.subscribe("unknown") is None

    run(main())


def test_unsubscribe_and_timeout():
    async def main():
        hub = CaptionHub()
        hub.open("s")
        sub = hub.subscribe("s")
        assert await sub.next(timeout_s=0.01) is None and sub.closed is None
        hub.unsubscribe(sub)
        hub.publish("s", words("x"))
        assert sub.queue.empty()

    run(main())
