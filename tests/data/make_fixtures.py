"""Re-create the speech fixtures in this folder and auralm/samples (run once by hand; tests only read the files).

Needs espeak-ng (`apt-get install espeak-ng`). Each clip is synthesised at
espeak's 22.05 kHz, then resampled and encoded as its name says; texts.json
beside them holds what each one says. The demo's spoken question is a test-split clip of the broad
data recipe, made again from its seed; its answer is in answers.json.
"""

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional

HERE = Path(__file__).parent
SAMPLES = HERE.parents[1] / "auralm" / "samples"

# file: (voice, words per minute, sample rate, channels, text)
CLIPS = {
    HERE / "en_16k.wav": ("en-us", 140, 16000, 1, "The children are playing football in the garden."),
    HERE / "en_slow_22k.flac": (
        "en-us",
        120,
        22050,
        1,
        "Please call Stella and ask her to bring these things with her from the store.",
    ),
    HERE / "en_fast_24k.ogg": ("en-us", 180, 24000, 1, "I would like a cup of coffee and a glass of water, please."),
    HERE / "en_48k.opus": ("en-us", 140, 48000, 1, "Open the window, it is very warm in this room."),
    HERE / "en_stereo_44k.mp3": ("en-us", 150, 44100, 2, "Today is a good day to learn something new."),
    HERE / "en_8k.wav": ("en-us", 140, 8000, 1, "Can you hear me on the telephone?"),
    HERE / "de_16k.flac": (
        "de",
        140,
        16000,
        1,
        "Guten Morgen. Heute ist das Wetter sehr schön, und wir gehen im Park spazieren.",
    ),
    SAMPLES / "speech_en.flac": (
        "en-us",
        130,
        16000,
        1,
        "Welcome to this short demonstration. The recording you hear was made by a computer voice. "
        "First the sound is decoded, mixed down to one channel, and resampled to sixteen thousand samples per second. "
        "Then a speech recognition model writes down the words it hears.",
    ),
}


# the main job's spoken question: clip 000788 of the test split of `auralm data synth --out data/speech-v2 --seed 0`
# (a voice and a sentence no training saw), made again from its plan
QUESTION = SAMPLES / "question_en.flac"
QUESTION_INDEX = 788


def make_question() -> tuple[np.ndarray, int, str, str]:
    from auralm.data import synthetic_speech as synth

    example = synth.plan_examples(0, examples=QUESTION_INDEX + 1, recipe="broad")[QUESTION_INDEX]
    assert example.split == "test", example
    return synth.make_clip(example).numpy(), 16000, example.item.text, example.item.answer


def synthesise(voice: str, wpm: int, text: str) -> tuple[np.ndarray, int]:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text], check=True, capture_output=True
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return samples, rate


def main() -> None:
    texts: dict[Path, dict[str, str]] = {}
    for path, (voice, wpm, rate, channels, text) in CLIPS.items():
        samples, espeak_rate = synthesise(voice, wpm, text)
        audio = torchaudio.functional.resample(torch.from_numpy(samples), espeak_rate, rate).numpy()
        if channels == 2:  # a real stereo pair: the right channel quieter and 5 ms later
            delay = rate // 200
            audio = np.stack([audio, 0.6 * np.concatenate([np.zeros(delay, np.float32), audio[:-delay]])], axis=1)
        opus = {"format": "OGG", "subtype": "OPUS"} if path.suffix == ".opus" else {}
        soundfile.write(path, audio, rate, **opus)
        texts.setdefault(path.parent, {})[path.name] = text
        print(f"{path.name}: {len(audio) / rate:.1f} s, {rate} Hz, {channels} ch, {path.stat().st_size // 1024} KiB")
    audio, rate, text, answer = make_question()
    soundfile.write(QUESTION, audio, rate, format="FLAC")
    texts[SAMPLES][QUESTION.name] = text
    (SAMPLES / "answers.json").write_text(json.dumps({QUESTION.name: answer}, indent=2) + "\n")
    print(f"{QUESTION.name}: {len(audio) / rate:.1f} s, the test split's clip")
    for folder, folder_texts in texts.items():
        (folder / "texts.json").write_text(json.dumps(folder_texts, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
