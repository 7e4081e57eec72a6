"""The set-up promises: README commands, CI, a cheap import."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [b.strip() for b in blocks if "pip install" in b]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "torch==2.13.0" in main_job and "torch==2.13.0" in tests
    assert "streamvid ask" in main_job
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert tests in ci, "the last line of .ci/run must be the README's test command"
    for path in ("pyproject.toml", ".ci/run"):
        assert "torchvision" not in (ROOT / path).read_text()


def test_import_is_cheap():
    code = (
        "import sys, streamvid, memory, agents; "
        "bad = [m for m in ('transformers', 'faiss', 'av') if m in sys.modules]; "
        "import torch; assert not torch.cuda.is_initialized(); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sample_video_command(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app
    from streamvid.ingest import FileSource

    result = CliRunner().invoke(app, ["sample-video", str(tmp_path / "s.mp4")])
    assert result.exit_code == 0, result.output
    assert "a red square on a green background" in result.output
    times = [f.time for f in FileSource(tmp_path / "s.mp4").frames()]
    assert len(times) == 192 and times[-1] == 191 / 8


def test_cli_demo_runs(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["demo", "--ratio", "0.1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "infomerge" in result.output and "vidcom2" in result.output and "aot" in result.output
    assert "1.0 is lossless" in result.output  # the sentence that says what the numbers mean


def test_cli_demo_bad_video_is_one_clear_error(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["demo", str(tmp_path / "missing.mp4")])
    assert result.exit_code == 1
    assert "cannot open" in result.output and "Traceback" not in result.output


def test_cli_demo_on_a_video_file(tmp_path):
    import av
    import numpy as np
    from typer.testing import CliRunner

    from cli.main import app

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            img = np.full((48, 64, 3), (i * 20) % 256, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    result = CliRunner().invoke(app, ["demo", str(path)])
    assert result.exit_code == 0, result.output
    assert "12 frames" in result.output


def test_lint_is_clean():
    import shutil

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    folders = ["streamvid", "memory", "agents", "bench", "cli", "examples", "tests"]
    out = subprocess.run([ruff, "check", *folders], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
