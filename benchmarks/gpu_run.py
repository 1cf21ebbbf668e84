"""The Python half of benchmarks/gpu_run.sh and gpu_wheels.sh (see gpu_run.sh for the whole story).

    python benchmarks/gpu_run.py stub .whl/stub             # here: the packaged models' shapes, no weights
    python benchmarks/gpu_run.py check-wheels .whl          # here: is every requirement carried or on the image?
    python benchmarks/gpu_run.py check-env .whl             # there: versions met, carried modules import
    python benchmarks/gpu_run.py random-models .whl/stub DIR  # there: random weights of those shapes
    python benchmarks/gpu_run.py section STEPS --device NAME --env TEXT --results FILE --copy FILE

Torch, transformers and auralm are imported inside the commands that need them, so `section` still
writes its report when the install failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.metadata
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# What the GPU machine's image holds of auralm's dependency tree (the device tool's KINDS.md lists the
# whole image); gpu_wheels.sh brings the rest.
IMAGE = {
    "accelerate", "click", "einops", "numba", "numpy", "packaging", "peft", "pytest", "pyyaml", "requests",
    "safetensors", "sympy", "tiktoken", "tokenizers", "torch", "torchaudio", "tqdm", "transformers", "triton",
    "typing-extensions",
}  # fmt: skip
TEST_REQUIREMENTS = ["pytest>=8"]  # `pytest -m gpu` runs there too
# The markers the GPU machine's Python evaluates requirements with.
GPU_PYTHON = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix",
}  # fmt: skip
LLM = "smollm2-135m"  # the default LLM's config, generation config and tokenizer, in the stub
WHISPER = "whisper-tiny.en.json"  # Whisper tiny.en's ModelDimensions, in the stub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("stub").add_argument("folder", type=Path)
    commands.add_parser("check-wheels").add_argument("wheels", type=Path)
    commands.add_parser("check-env").add_argument("wheels", type=Path)
    random = commands.add_parser("random-models")
    random.add_argument("stub", type=Path)
    random.add_argument("folder", type=Path)
    section = commands.add_parser("section")
    section.add_argument("steps", type=Path, help="name, status, seconds, command, log file: one step a line, tabs")
    section.add_argument("--device", required=True)
    section.add_argument("--env", required=True, help="one line: driver, versions, where it ran")
    section.add_argument("--results", type=Path, required=True, help="RESULTS.md to append the section to")
    section.add_argument("--copy", type=Path, required=True, help="where the section alone goes too")
    args = parser.parse_args()
    if args.command == "stub":
        stub(args.folder)
    elif args.command == "check-wheels":
        sys.exit(check_wheels(args.wheels, importlib.metadata.requires("auralm") or []))
    elif args.command == "check-env":
        sys.exit(check_env(args.wheels, importlib.metadata.requires("auralm") or []))
    elif args.command == "random-models":
        random_models(args.stub, args.folder)
    else:
        text = section_text(args.steps, args.device, args.env)
        args.copy.write_text(text)
        with args.results.open("a") as results:
            results.write("\n" + text)
        print(text)


def stub(folder: Path) -> None:
    """The shapes of the packaged default models, without weights: a few MB instead of 160."""
    from auralm.checkpoints import load_whisper
    from auralm.lm import load_llm

    model, tokenizer = load_llm()
    model.config.save_pretrained(folder / LLM)
    model.generation_config.save_pretrained(folder / LLM)
    tokenizer.save_pretrained(folder / LLM)
    (folder / WHISPER).write_text(json.dumps(dataclasses.asdict(load_whisper("tiny.en").dims), indent=1))
    print(f"stub: {LLM} config + tokenizer and Whisper tiny.en dims in {folder}")


def random_models(stub: Path, folder: Path) -> None:
    """Random weights in the stub's shapes, where the benchmarks read weights: an openai-whisper
    checkpoint (folder/whisper-tiny.en-random.pt) and a Hugging Face folder (folder/smollm2-135m-random)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(**json.loads((stub / WHISPER).read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    whisper = folder / "whisper-tiny.en-random.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, whisper)
    llm = folder / f"{LLM}-random"
    shutil.copytree(stub / LLM, llm, dirs_exist_ok=True)  # the tokenizer; save_pretrained adds the weights
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llm)).save_pretrained(llm)
    print(f"random weights: {whisper}, {llm}")


def carried(wheels: Path) -> dict[str, tuple[Version, list[Requirement], list[str]]]:
    """Each carried wheel's name → (version, requirements, top-level modules), read from its metadata."""
    found = {}
    for path in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(path) as wheel:
            info = next(n.split("/")[0] for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = wheel.read(f"{info}/METADATA").decode()
            # packages (a top-level folder with __init__.py) and single-file modules; no data folders
            parts = [n.split("/") for n in wheel.namelist()]
            modules = {p[0] for p in parts if p[1:] == ["__init__.py"]} | {
                p[0][:-3] for p in parts if p[0].endswith(".py")
            }
        name = re.search(r"^Name: (.+)$", metadata, re.M).group(1).strip()
        version = Version(re.search(r"^Version: (.+)$", metadata, re.M).group(1).strip())
        requirements = [Requirement(r) for r in re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)]
        modules = sorted(m for m in modules if not m.startswith("_"))
        found[canonicalize_name(name)] = (version, requirements, modules)
    return found


def requirements(wheels: Path, auralm: list[str], environment: dict[str, str]) -> list[tuple[str, Requirement]]:
    """(who needs it, requirement) for auralm, the tests and every carried wheel; extras, markers that do not
    hold there and the weights packages left out (random weights of their shapes stand in)."""
    from auralm.checkpoints import WHISPER_MODELS

    weights = {canonicalize_name(name) for w in WHISPER_MODELS.values() for name in w.pip_names}
    needs = [("auralm", Requirement(r)) for r in auralm + TEST_REQUIREMENTS]
    needs += [(name, r) for name, (_, reqs, _) in carried(wheels).items() for r in reqs]
    return [
        (who, r)
        for who, r in needs
        if canonicalize_name(r.name) not in weights and (r.marker is None or r.marker.evaluate(environment))
    ]


def check_wheels(wheels: Path, auralm: list[str]) -> int:
    """Here: every requirement (auralm's as given, the tests', the wheels') is a carried wheel at a fitting
    version, or on the GPU image. 0 when so, else 1."""
    have = {name: version for name, (version, _, _) in carried(wheels).items()}
    problems = []
    for who, r in requirements(wheels, auralm, {**GPU_PYTHON, "extra": ""}):
        name = canonicalize_name(r.name)
        if name in have and not r.specifier.contains(have[name], prereleases=True):
            problems.append(f"{who} needs {r}, carried {name} {have[name]}")
        elif name not in have and name not in IMAGE:
            problems.append(f"{who} needs {r}: neither carried nor on the GPU image")
    for line in problems:
        print(f"check-wheels: {line}")
    print(f"check-wheels: {len(have)} wheels; {'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


def check_env(wheels: Path, auralm: list[str]) -> int:
    """There: every requirement met by what is installed, and every carried module imports. 0 when so, else 1."""
    problems = []
    for who, r in requirements(wheels, auralm, {"extra": ""}):
        try:
            version = importlib.metadata.version(r.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{who} needs {r}: not installed")
            continue
        if not r.specifier.contains(version, prereleases=True):
            problems.append(f"{who} needs {r}, found {version}")
    origins = set()
    for name, (_, _, modules) in carried(wheels).items():
        for module in modules:
            try:
                path = Path(importlib.import_module(module).__file__)
                origins.add(str(path.parents[1] if path.name == "__init__.py" else path.parent))
            except Exception as e:  # any failure to import is what this check is for
                problems.append(f"{name}: import {module} failed ({type(e).__name__}: {e})")
    for line in problems:
        print(f"check-env: {line}")
    versions = ", ".join(f"{n} {_version(n)}" for n in ("torch", "triton", "transformers", "numpy", "einops", "auralm"))
    print(f"check-env: carried modules imported from {', '.join(sorted(origins))}")
    print(f"check-env: {versions}; {'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def section_text(steps: Path, device: str, env: str, lines_per_step: int = 40) -> str:
    """A RESULTS.md section: heading with date and device, a table of the steps, then each step's command
    and the end of its output."""
    rows = [line.split("\t") for line in steps.read_text().splitlines() if line]
    out = [
        f"## GPU run — {datetime.date.today().isoformat()}, {device}",
        "",
        f"`bash benchmarks/gpu_run.sh` — {env}. Weights are random, in the shapes of the packaged models (Whisper "
        "tiny.en; SmolLM2-135M-Instruct with its own tokenizer): the weights packages do not fit in what the "
        "device machine is sent, and speed does not depend on trained weights.",
        "",
        "| step | result | seconds |",
        "|---|---|---:|",
    ]
    out += [f"| {name} | {_result(status, Path(log))} | {seconds} |" for name, status, seconds, _, log in rows]
    for name, status, _, command, log in rows:
        text = Path(log).read_text(errors="replace").splitlines() if Path(log).is_file() else []
        cut = f", last {lines_per_step} of {len(text)} lines" if len(text) > lines_per_step else ""
        out += ["", f"### {name} ({status}{cut})", "", f"`{command}`"]
        if text:
            out += ["", "```text", *text[-lines_per_step:], "```"]
    return "\n".join(out) + "\n"


PYTEST_COUNTS = re.compile(
    r"^=*\s*(\d+ (?:passed|failed|skipped|deselected|errors?|xfailed|xpassed)\b.*?) in [\d.]+s", re.M
)


def _result(status: str, log: Path) -> str:
    """The status, with pytest's closing counts where the step printed them."""
    counts = PYTEST_COUNTS.findall(log.read_text(errors="replace")) if log.is_file() else []
    return f"{status}: {counts[-1]}" if counts else status


if __name__ == "__main__":
    main()
