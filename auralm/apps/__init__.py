"""The front ends: the `auralm` command (`cli`, one module per command), the HTTP servers (`server`, `upstream`)
and the demos (`demo`, `web_demo` with its Talk tab `web_talk`).

Everything here is built on the library (`auralm.tokenizer`, `auralm.lm`, …) and nothing there imports from
here. Speech models load through one call, `SpeechChat.from_pretrained` (`arguments.load_speech_chat` maps the
model flags to it), and every `--device` defaults to one rule, `auto` (`auralm.devices`).
"""
