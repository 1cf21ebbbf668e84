"""`auralm demo-web` driven in Debian's headless Chromium (Playwright, no browser downloaded): the Talk tab hears
the shipped spoken question through Chromium's fake microphone over real WebRTC and answers it; the Tokens tab
shows a clip's tokens, decoded text and codes; a non-audio upload shows an error and the next clip works;
the Chat tab answers the shipped spoken question with the shipped models. The page needs nothing beyond 127.0.0.1."""

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile

from auralm.apps.demo import QUESTION, SAMPLES
from auralm.apps.web_demo import build_app
from auralm.lm import SpeechChat
from auralm.quality_report import is_correct
from auralm.tokenizer import load_audio
from tests.conftest import DATA

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; make test does)"),
]
# Asked for from CDNs by Gradio (an iframe helper for embedding) and fastrtc (a start sound); offline they fail,
# and nothing else depends on them.
OPTIONAL_ASSETS = ("iframeResizer.contentWindow.min.js", "pop-sounds.mp3")
SCREENSHOTS = os.environ.get("AURALM_WEB_SCREENSHOTS")  # a folder to keep the README's pictures of the tabs in


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
def microphone(tmp_path_factory) -> Path:
    """What Chromium's fake microphone says, over and over: the shipped question between silences, the one after it
    long enough for the reply to end first on a busy machine (the question heard again interrupts it)."""
    question = load_audio(QUESTION).numpy()
    path = tmp_path_factory.mktemp("microphone") / "question.wav"
    soundfile.write(path, np.concatenate([np.zeros(16_000), question, np.zeros(320_000)]), 16_000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(microphone):
    from playwright.sync_api import sync_playwright

    fake_microphone = [
        "--use-fake-ui-for-media-stream",  # grant the microphone without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
    ]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", *fake_microphone]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    elsewhere = []
    here = (url, f"blob:{url}", "data:")
    page.on("request", lambda request: request.url.startswith(here) or elsewhere.append(request.url))
    page.goto(url, wait_until="load", timeout=60_000)
    yield page
    page.close()
    assert [u for u in elsewhere if not u.endswith(OPTIONAL_ASSETS)] == []  # offline: the page needs no internet


@pytest.fixture
def tokens_page(page):
    page.get_by_role("tab", name="Tokens").click(timeout=60_000)
    page.wait_for_selector("#tokens-run", timeout=60_000)
    return page


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


def settled_text(page, element, quiet_ms: int = 3000, timeout_ms: int = 120_000) -> str:
    """`element`'s text once it has not changed for `quiet_ms`: a reply streamed in pieces, whole."""
    text, waited = element.inner_text(), 0
    while waited < timeout_ms:
        page.wait_for_timeout(quiet_ms)
        waited += quiet_ms
        if (now := element.inner_text()) == text:
            return text
        text = now
    raise TimeoutError(f"still changing after {timeout_ms} ms: {text!r}")


def keep_screenshot(page, tab: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"web-demo-{tab}.png"), full_page=True)


def test_talk_tab_answers_the_question_heard_through_the_microphone(page):
    expected = json.loads((SAMPLES / "answers.json").read_text())[QUESTION.name]
    page.locator("#talk-voice button").first.click(timeout=60_000)  # access the microphone
    page.locator("#talk-voice button", has_text="Record").click(timeout=30_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#talk-log [data-testid=\"bot\"]')].some(m => m.innerText.trim())",
        timeout=120_000,
    )
    asked = page.locator('#talk-log [data-testid="user"]').first.inner_text()
    assert asked.startswith("[spoken, ")
    seconds = float(asked.removeprefix("[spoken, ").removesuffix(" s]"))
    assert 1.7 <= seconds < 4.0  # the question and at most a detection chunk of silence each side, over WebRTC
    reply = settled_text(page, page.locator('#talk-log [data-testid="bot"]').first)  # streamed: the whole reply
    print(f"Talk tab: heard {seconds} s, answered {reply!r} (expected {expected!r})")
    assert is_correct(expected, reply), reply  # as the Chat tab's: the question heard, not only a reply made
    keep_screenshot(page, "talk")


def test_tokens_tab_shows_the_tokens_the_text_and_the_codes(tokens_page, chat, tmp_path):
    page = tokens_page
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
    page.screenshot(path=str(tmp_path / "tokens.png"), full_page=True)  # it renders
    keep_screenshot(page, "tokens")


def test_a_non_audio_upload_shows_an_error_and_the_next_clip_works(tokens_page, tmp_path):
    page = tokens_page
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
