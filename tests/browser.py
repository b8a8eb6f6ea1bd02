"""Headless Chromium with a fake microphone, for browser tests (Selenium).

Chromium and chromedriver come from Debian (`make browserdeps`). The fake
microphone plays a WAV file in a loop; media permission prompts are
auto-accepted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when `make browserdeps` has not run."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def launch(fake_audio_wav: Path | None = None) -> webdriver.Chrome:
    """Headless Chromium whose only microphone plays `fake_audio_wav` (a tone without one)."""
    paths = find_chromium()
    if paths is None:
        raise RuntimeError("chromium/chromedriver not installed: run `make browserdeps`")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root, where the sandbox cannot start
        "--disable-dev-shm-usage",  # small /dev/shm in containers
        "--window-size=1200,800",
        "--use-fake-ui-for-media-stream",  # accept the microphone permission prompt
        "--use-fake-device-for-media-stream",
    ):
        options.add_argument(arg)
    if fake_audio_wav is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={fake_audio_wav}")
    # An explicit driver path keeps Selenium Manager from trying to download one.
    return webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path
