"""The captions page in real headless Chromium with a fake microphone, against the real service.

The service (conftest.py `service`: Ray Serve on a local Ray) runs the
model replicas on a random tiny checkpoint, which commits random words:
enough to show that audio flows from the page through the ingest to the
engine and captions flow back to the page and a viewer. Screenshots land
in artifacts/.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest

from captions.store import StreamStatus, TranscriptStore
from tests.browser import find_chromium, launch, screenshot

from .conftest import SERVICE_URL, Tenants

pytestmark = pytest.mark.slow

SPEECH = "the quick brown fox jumps over the lazy dog while the captions follow every word"


def speech_wav(path: Path) -> Path:
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), SPEECH], check=True)
    return path


@pytest.fixture
def browser_ready() -> None:
    if find_chromium() is None:
        pytest.skip("chromium/chromedriver missing: run `make browserdeps`")


def test_page_shows_live_captions_from_a_fake_microphone(browser_ready, service, tenants: Tenants, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    key = tenants.keys["acme"]
    # The replicas' database, read directly: what the page showed must be stored.
    store = TranscriptStore(tenants.db_url)
    driver = launch(speech_wav(tmp_path / "speech.wav"))
    try:
        driver.get(f"{SERVICE_URL}/?key={key}")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "start").is_enabled())
        assert Select(driver.find_element(By.ID, "mic")).options  # the fake microphone is listed
        # A random model cannot detect the language; name it.
        Select(driver.find_element(By.ID, "language")).select_by_value("en")
        driver.find_element(By.ID, "start").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#captions .committed .word")) >= 3)
        session = driver.find_element(By.TAG_NAME, "body").get_attribute("data-session")

        # The tentative tail is styled apart from committed words.
        styles = driver.execute_script(
            "const s = (q) => getComputedStyle(document.querySelector(q));"
            "return [s('#captions .committed').color, s('#captions .tentative').color,"
            "        s('#captions .tentative').fontStyle];"
        )
        assert styles[0] != styles[1] and styles[2] == "italic"

        driver.find_element(By.ID, "share").click()
        wait.until(lambda d: d.find_element(By.ID, "viewer-link").get_attribute("value"))
        viewer_link = driver.find_element(By.ID, "viewer-link").get_attribute("value")
        shot = screenshot(driver, "captions-page.png")

        publisher = driver.current_window_handle
        driver.switch_to.new_window("tab")
        driver.get(viewer_link)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#captions .committed .word"))
        screenshot(driver, "captions-viewer.png")
        driver.switch_to.window(publisher)

        driver.find_element(By.ID, "stop").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "Finished")
        shown = [w.text.strip() for w in driver.find_elements(By.CSS_SELECTOR, "#captions .committed .word")]
        # A caption line per utterance: a break before each word that follows an utterance end.
        breaks = driver.execute_script(
            "return [...document.querySelectorAll('#captions .committed .utterance-break')]"
            ".map((br) => [...br.parentElement.querySelectorAll('.word')].indexOf(br.nextElementSibling));"
        )
    finally:
        driver.quit()

    assert shot.is_file() and shot.stat().st_size > 0
    # Every word the page showed was stored, in order, and the stream is closed.
    stored = store.words("acme", session)
    assert [w.text for w in stored] == shown
    assert breaks == [w.seq + 1 for w in stored[:-1] if w.utterance_end]
    assert store.stream("acme", session).status is StreamStatus.ENDED
    request = urllib.request.Request(
        f"{SERVICE_URL}/v1/streams/{session}/transcript.vtt", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request) as response:
        vtt = response.read().decode()
    assert vtt.startswith("WEBVTT\n\n00:00:") and shown[0] in vtt


MSGPACK_ROUNDTRIP = """
const [packed, value, done] = arguments;
import("/static/msgpack.js").then((m) => done({
  decoded: m.decode(Uint8Array.from(packed)),
  encoded: Array.from(m.encode(value)),
  audio: Array.from(m.encode({type: "audio", data: Uint8Array.from({length: 300}, (_, i) => i % 256)})),
})).catch((err) => done({error: String(err)}));
"""


def test_page_msgpack_codec_agrees_with_python_msgpack(browser_ready, service):
    import msgpack

    value = {
        "type": "words",
        "words": [{"text": "héllo wörld", "start": 0.5, "end": 1.25}] * 20,
        "small": -5, "big": 70000, "neg": -70000, "huge": 2**40, "flag": True, "none": None,
        "long": "x" * 300, "list": list(range(20)),
    }
    driver = launch()
    try:
        driver.get(f"{SERVICE_URL}/static/style.css")  # any page of the server's origin
        out = driver.execute_async_script(MSGPACK_ROUNDTRIP, list(msgpack.packb(value)), value)
    finally:
        driver.quit()
    assert "error" not in out, out
    assert out["decoded"] == value
    assert msgpack.unpackb(bytes(out["encoded"]), raw=False) == value
    audio = msgpack.unpackb(bytes(out["audio"]), raw=False)
    assert audio == {"type": "audio", "data": bytes(i % 256 for i in range(300))}
