"""`auralm demo-web` driven in Debian's headless Chromium (Playwright, no browser downloaded): the Tokens tab
shows a clip's tokens, decoded text and codes; a non-audio upload shows an error and the next clip works;
the Chat tab answers the shipped spoken question with the shipped models."""

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from auralm.demo import QUESTION, SAMPLES
from auralm.evaluation import is_correct
from auralm.lm import SpeechChat
from auralm.tokenizer import load_audio
from auralm.web_demo import build_app
from tests.conftest import DATA

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; make test does)"),
]
SCREENSHOT = os.environ.get("AURALM_WEB_SCREENSHOT")  # where to keep the Tokens tab's picture (the README's)


@pytest.fixture(scope="module")
def chat() -> SpeechChat:
    return SpeechChat.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def url(chat):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(chat)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url, wait_until="load", timeout=60_000)
    page.wait_for_selector("#tokens-run", timeout=60_000)
    yield page
    page.close()


def upload(page, element: str, path: Path) -> None:
    page.set_input_files(f"#{element} input[type=file]", str(path))
    page.locator(f"#{element} audio, #{element} .waveform-container").first.wait_for(state="attached", timeout=30_000)


def tokenize(page, path: Path, done: str) -> None:
    """Upload a file on the Tokens tab, press Tokenize, wait until the status says `done`."""
    if page.locator('#tokens-audio button[aria-label="Clear"]').count():  # the last clip, to make room
        page.click('#tokens-audio button[aria-label="Clear"]')
    page.set_input_files("#tokens-audio input[type=file]", str(path))
    page.wait_for_timeout(500)  # the upload reaches the server before the click does
    page.click("#tokens-run")
    page.wait_for_function(
        f"() => document.querySelector('#tokens-status').innerText.includes({json.dumps(done)})", timeout=120_000
    )


def test_tokens_tab_shows_the_tokens_the_text_and_the_codes(page, chat, tmp_path):
    clip = DATA / "en_16k.wav"
    tokenize(page, clip, "sound tokens in")
    speech = chat.speech_tokenizer
    codes = speech.encode(load_audio(clip))
    assert page.locator("#tokens-string textarea").input_value() == speech.to_string(codes)
    assert page.locator("#tokens-text textarea").input_value() == speech.decode_text([codes], temperatures=(0.0,))[0]
    assert page.locator("#tokens-picture img").count() == 1
    links = page.locator("#tokens-files a")
    json_link = next(link for link in links.all() if ".json" in (link.get_attribute("href") or ""))
    downloaded = page.request.get(json_link.get_attribute("href"))
    assert json.loads(downloaded.body()) == codes.tolist()
    page.screenshot(path=str(tmp_path / "tokens.png"), full_page=True)
    if SCREENSHOT:
        shutil.copy(tmp_path / "tokens.png", SCREENSHOT)


def test_a_non_audio_upload_shows_an_error_and_the_next_clip_works(page, tmp_path):
    (tmp_path / "notes.wav").write_text("not audio at all\n" * 100)
    tokenize(page, tmp_path / "notes.wav", "Error:")
    assert "not a readable audio file" in page.locator("#tokens-status").inner_text()
    assert page.locator("#tokens-string textarea").input_value() == ""
    tokenize(page, DATA / "en_8k.wav", "sound tokens in")  # the app goes on
    assert page.locator("#tokens-string textarea").input_value().startswith("<|sound_start|><|sound_")


def test_chat_tab_answers_the_spoken_question(page):
    expected = json.loads((SAMPLES / "answers.json").read_text())[QUESTION.name]
    page.get_by_role("tab", name="Chat").click()
    page.click("#chat-send")  # nothing to send yet
    page.wait_for_function("() => document.querySelector('#chat-latency').innerText.includes('Error:')")
    upload(page, "chat-audio", QUESTION)
    page.click("#chat-send")
    page.wait_for_function(
        "() => document.querySelector('#chat-latency').innerText.includes('whole reply')", timeout=120_000
    )
    replies = page.locator('#chat-log [data-testid="bot"]').all_inner_texts()
    assert any(is_correct(expected, reply) for reply in replies), replies
    assert "first words" in page.locator("#chat-latency").inner_text()
