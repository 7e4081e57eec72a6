"""The CLI as a new user meets it: every bad invocation is one line (plus a hint) and an exit code
(2 usage, 1 runtime), ``--help`` imports no torch, a failed first run leaves nothing behind, and
the README's option tables are the commands' own options."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DEAD_URL = "tcp://127.0.0.1:9"  # nothing listens on the discard port: connection refused at once


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def error_lines(result) -> list[str]:
    """The output, checked to be one 'error:' line and at most one 'hint:' line after it (warnings aside)."""
    lines = [line for line in result.output.splitlines() if not line.startswith("warning:")]
    assert "Traceback" not in result.output, result.output
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    tail = lines[errors[0] :]
    assert len(tail) <= 2 and all(line.startswith("hint: ") for line in tail[1:]), result.output
    return tail


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from agent_helpers import color_video

    from bench.random_models import tiny_llava

    root = tmp_path_factory.mktemp("cli-errors")
    return {
        "llava": str(tiny_llava(root / "llava")),
        "video": color_video(root / "colors.mp4", [("red", 3.0), ("green", 3.0), ("blue", 3.0)]),
        "root": root,
    }


@pytest.fixture(scope="module")
def memory(models):
    """A memory of the 9 s video (segments up to 8.5 s), stream 'default'."""
    mem = models["root"] / "mem"
    args = ("ingest", models["video"], "--memory", mem, "--model", models["llava"], "--embedder", "none")
    result = run(*args, "--fps", 2, "--device", "cpu", "--cap-tokens", 500)
    assert result.exit_code == 0, result.output
    assert "Loading weights" not in result.output and "[transformers]" not in result.output  # quiet by default
    return mem


# -- options checked before anything heavy runs (exit 2) --------------------------------------


@pytest.mark.parametrize("fps", ["0", "-1", "nan", "inf"])
def test_fps_must_be_positive_and_finite(tmp_path, fps):
    result = run("ingest", "video.mp4", "--memory", tmp_path / "m", "--fps", fps)
    assert result.exit_code == 2
    error, hint = error_lines(result)
    assert error.startswith("error: Invalid value for '--fps': must be a finite number > 0")
    assert hint == "hint: see 'streamvid ingest --help'"
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:99"])
def test_device_must_be_one_this_machine_has(tmp_path, device):
    result = run("ingest", "video.mp4", "--memory", tmp_path / "m", "--device", device)
    assert result.exit_code == 2
    (error, _) = error_lines(result)
    assert f"Invalid value for '--device': '{device}' is not available here; choose one of: cpu" in error


def test_device_choices_follow_what_torch_sees(monkeypatch):
    import torch
    import typer

    from cli.common import available_devices, check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert available_devices() == ["cpu", "cuda", "cuda:0", "cuda:1"]
    assert check_device("CUDA:1") == "cuda:1" and check_device(None) is None
    with pytest.raises(typer.BadParameter, match="'cuda:2' is not available here; choose one of: cpu, cuda, cuda:0"):
        check_device("cuda:2")
    with pytest.raises(typer.BadParameter, match="'mps' is not available"):
        check_device("mps")


def test_memory_that_is_a_file_is_one_line(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    for command in (("ingest", "video.mp4"), ("watch", DEAD_URL)):
        result = run(*command, "--memory", file)
        assert result.exit_code == 2
        (error, _) = error_lines(result)
        assert f"Invalid value for '--memory': {file} is a file; pass a memory directory" in error


@pytest.mark.parametrize("cap", ["-5", "0"])
def test_cap_tokens_must_be_at_least_one(tmp_path, cap):
    result = run("ingest", "video.mp4", "--memory", tmp_path / "m", "--cap-tokens", cap)
    assert result.exit_code == 2
    (error, _) = error_lines(result)
    assert error == f"error: Invalid value for '--cap-tokens': must be >= 1, got {cap}"


@pytest.mark.parametrize(("option", "value"), [("--ratio", "0"), ("--ratio", "1.5"), ("--max-reconnects", "-1")])
def test_other_ranges(tmp_path, option, value):
    result = run("watch", DEAD_URL, "--memory", tmp_path / "m", option, value)
    assert result.exit_code == 2
    (error, _) = error_lines(result)
    assert f"Invalid value for '{option}'" in error


def test_unknown_compressor_names_the_known_ones(tmp_path):
    result = run("ingest", "video.mp4", "--memory", tmp_path / "m", "--compressor", "zip")
    assert result.exit_code == 2
    (error,) = error_lines(result)
    assert error.startswith("error: --compressor: unknown compressor 'zip'; choose one of: ") and "infomerge" in error
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("k", ["0", "-1"])
def test_ask_k_must_be_at_least_one(memory, k):
    result = run("ask", memory, "What is red?", "--k", k)
    assert result.exit_code == 2
    (error, _) = error_lines(result)
    assert error == f"error: Invalid value for '--k': must be >= 1, got {k}"


def test_ask_unknown_stream_names_the_known_ones(memory):
    result = run("ask", memory, "What is red?", "--stream", "nosuch")
    assert result.exit_code == 2
    assert error_lines(result) == ["error: --stream: unknown stream 'nosuch'; choose one of: default"]


def test_ask_start_after_the_recording_is_one_line(memory):
    result = run("ask", memory, "What is red?", "--start", 100)
    assert result.exit_code == 2
    error, hint = error_lines(result)
    assert error == "error: --start 100 is after the end of the recording (8.5 s, 0:08)"
    assert hint == "hint: choose a --start below 8.5"
    result = run("ask", memory, "What is red?", "--start", 5, "--end", 2)
    assert result.exit_code == 2 and error_lines(result) == ["error: --start 5 must come before --end 2"]


def test_time_range_is_clamped_to_the_timeline():
    from cli.commands import _time_range
    from cli.common import CliError

    mem = SimpleNamespace(end_time=lambda streams: 8.5)
    assert _time_range(mem, 3.0, None, None) == (3.0, 8.5)  # no end: the end of the recording, not 10^12 s
    assert _time_range(mem, None, 100.0, None) == (0.0, 8.5)
    assert _time_range(mem, 1.0, 2.0, None) == (1.0, 2.0)
    assert _time_range(mem, None, None, None) is None
    with pytest.raises(CliError, match="--end 0 must come after --start 0"):
        _time_range(mem, None, 0.0, None)
    assert _time_range(SimpleNamespace(end_time=lambda streams: None), 3.0, None, None) is None


def test_ask_with_a_start_answers_from_that_time_on(memory, models):
    args = ("ask", memory, "What happened?", "--start", 4, "--embedder", "none", "--max-new-tokens", 2)
    result = run(*args, "--device", "cpu")
    assert result.exit_code == 0, result.output
    used = re.search(r"segments used: (.*)", result.output).group(1)
    starts = [float(m) for m in re.findall(r"default ([\d.]+)-", used)]
    ends = [float(m) for m in re.findall(r"-([\d.]+)s", used)]
    assert starts and max(ends) <= 8.5 + 1e-6 and min(ends) > 4


# -- watch: a dead source is a failure -----------------------------------------------------------


@pytest.fixture
def fast_backoff(monkeypatch):
    import agents.ingest

    monkeypatch.setattr(agents.ingest, "DEFAULT_RECONNECT_BACKOFF", (0.01, 0.01))


def _watch(models, memory_dir, *extra):
    args = ("watch", DEAD_URL, "--memory", memory_dir, "--model", models["llava"], "--embedder", "none")
    return run(*args, "--device", "cpu", *extra)


def test_watch_a_dead_source_until_duration_exits_1(models, tmp_path, fast_backoff):
    result = _watch(models, tmp_path / "live", "--duration", 1, "--max-reconnects", 10_000)
    assert result.exit_code == 1
    error, hint = error_lines(result)
    assert error.startswith(f"error: {DEAD_URL}: no frame arrived (") and "reconnects; last error:" in error
    assert "--max-reconnects" in hint and "--reconnect-timeout" in hint
    assert "stopped:" not in result.output
    assert not (tmp_path / "live").exists()  # nothing stored: the new directory is gone


def test_watch_max_reconnects_gives_up_with_a_hint_naming_the_flag(models, tmp_path, fast_backoff):
    result = _watch(models, tmp_path / "live", "--max-reconnects", 2)
    assert result.exit_code == 1
    error, hint = error_lines(result)
    assert "gave up after 2 reconnect attempts" in error
    assert hint == "hint: pass --max-reconnects N or --reconnect-timeout SECONDS to wait longer for the source"


def test_watch_reconnect_timeout_gives_up(models, tmp_path, fast_backoff):
    result = _watch(models, tmp_path / "live", "--reconnect-timeout", 0.5, "--max-reconnects", 10_000)
    assert result.exit_code == 1
    (error, _) = error_lines(result)
    assert error.startswith(f"error: {DEAD_URL}: no frame for 0.5 s (") and error.endswith("; gave up")


# -- a fast, quiet start ------------------------------------------------------------------------


def test_help_and_argument_errors_import_no_heavy_library():
    code = textwrap.dedent(
        """
        import sys
        from typer.main import get_command
        from typer.testing import CliRunner
        from cli.main import app

        root = get_command(app)
        names = [[]] + [[n] for n in root.commands] + [["bench", n] for n in root.commands["bench"].commands]
        codes = [CliRunner().invoke(app, [*n, "--help"]).exit_code for n in names]
        codes.append(CliRunner().invoke(app, ["ingest", "v.mp4", "--memory", "m", "--fps", "0"]).exit_code)
        codes.append(CliRunner().invoke(app, ["ask", "m", "q", "--k", "0"]).exit_code)
        heavy = [m for m in ("torch", "transformers", "faiss", "av", "memory") if m in sys.modules]
        print(sorted(set(codes)), heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 2] []", out.stdout + out.stderr


def test_python_m_cli_help_runs_without_torch():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cli", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0 and "ingest" in out.stdout, out.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "streamvid.errors" in imported  # the import-time report is there ...
    assert not {"torch", "transformers", "faiss", "av"} & imported  # ... and names no heavy library


def test_offline_first_run_fails_fast_and_leaves_nothing(models, tmp_path):
    cache = tmp_path / "cache"
    for env, why in (
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        ({"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot be reached"),
    ):
        result = run("ask", models["video"], "What is red?", env={"STREAMVID_CACHE": str(cache), **env})
        assert result.exit_code == 1
        error, hint = error_lines(result)
        assert error.startswith("error: --model 'llava-hf/llava-onevision-qwen2-0.5b-ov-hf' is not downloaded")
        assert why in error
        assert "--model DIR" in hint and "HF_HUB_OFFLINE" in hint
        assert not cache.exists()


def test_resolve_checkpoint_uses_the_cache_when_the_hub_is_out_of_reach(tmp_path, monkeypatch):
    import huggingface_hub

    import cli.common as common

    snapshot = tmp_path / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    cached = {"org/cached": str(snapshot / "config.json")}
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: cached.get(repo))
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert common.resolve_checkpoint("org/cached", "--model") == str(snapshot)  # no network call at all
    with pytest.raises(common.CliError, match="'org/missing' is not downloaded and HF_HUB_OFFLINE is set"):
        common.resolve_checkpoint("org/missing", "--model")
    assert common.resolve_checkpoint(str(snapshot), "--model") == str(snapshot)  # a local directory as given
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(common, "hub_reachable", lambda: True)
    assert common.resolve_checkpoint("org/missing", "--model") == "org/missing"  # online: the hub downloads it


def test_failed_ask_on_a_video_leaves_no_partial_memory(models, tmp_path):
    cache = tmp_path / "cache"
    broken = tmp_path / "not-an-embedder"  # fails after the ingest began: in the model loader
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "nosuch"}')
    env = {"STREAMVID_CACHE": str(cache)}
    args = ("ask", models["video"], "q", "--model", models["llava"], "--embedder", broken, "--device", "cpu")
    result = run(*args, env=env)
    assert result.exit_code == 1
    (error, *_) = error_lines(result)
    assert "nosuch" in error and error.startswith("error: cannot load the embedder")  # typed, not a ValueError
    assert not cache.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("ask", models["video"], "q", "--model", empty, env=env)
    assert result.exit_code == 1 and "no config.json in this directory" in error_lines(result)[0]
    assert not cache.exists()


def test_a_failed_ingest_leaves_no_new_memory_directory(tmp_path):
    result = run("ingest", tmp_path / "missing.mp4", "--memory", tmp_path / "new" / "mem", "--embedder", "none")
    assert result.exit_code == 1
    error_lines(result)
    assert not (tmp_path / "new").exists()


def test_sample_video_is_written_where_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "a" / "b" / "clip.mp4"
    result = run("sample-video", target)
    assert result.exit_code == 0, result.output
    assert target.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "clip.mp4"]  # no partial file, nothing in cwd
    result = run("sample-video", tmp_path / "a")
    assert result.exit_code == 2 and "is a directory" in error_lines(result)[0]


def test_libraries_are_quiet_unless_verbose():
    import transformers
    from huggingface_hub.utils import are_progress_bars_disabled

    from cli.common import quiet_libraries

    try:
        quiet_libraries(verbose=False)
        assert transformers.logging.get_verbosity() == transformers.logging.ERROR
        assert not transformers.logging.is_progress_bar_enabled() and are_progress_bars_disabled()
        quiet_libraries(verbose=True)
        assert transformers.logging.get_verbosity() == transformers.logging.WARNING
        assert transformers.logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    finally:
        quiet_libraries(verbose=False)


def test_verbose_shows_the_model_loading_bars(memory):
    from cli.common import quiet_libraries

    try:
        result = run("--verbose", "ask", memory, "What is red?", "--max-new-tokens", 1, "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert "Loading weights" in result.output
    finally:
        quiet_libraries(verbose=False)
    result = run("ask", memory, "What is red?", "--max-new-tokens", 1, "--device", "cpu")
    assert result.exit_code == 0 and "Loading weights" not in result.output


def test_progress_is_plain_lines_off_a_terminal(capsys):
    from cli.common import IngestProgress

    stats = SimpleNamespace(media_seconds=12.0, frames_sampled=24, segments=4, frames_dropped=0, reconnects=0)
    bar = IngestProgress("ingest clip.mp4", 30.0, every=0.0, terminal=False)
    bar.update(stats)
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"ingest clip\.mp4: 40% \(12\.0 of 30\.0 s\), 24 frames, 4 segments, [\d.]+x real time, about \d+:\d\d left",
        line,
    ), line
    live = IngestProgress("watch cam", None, every=0.0, terminal=False)
    live.update(SimpleNamespace(**{**vars(stats), "frames_dropped": 3, "reconnects": 1}))
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"watch cam: 24 frames, 4 segments, [\d.]+x real time, 3 dropped, 1 reconnects, 0:00 elapsed", line
    ), line
    quiet = IngestProgress("ingest clip.mp4", 30.0, every=3600.0, terminal=False)
    quiet.update(stats)
    assert capsys.readouterr().err == ""  # periodic, not per frame


# -- errors at the entry point ------------------------------------------------------------------


def test_runtime_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    result = run("ask", tmp_path / "nope", "q")
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"error: {tmp_path / 'nope'} does not exist; pass a memory directory or a video file"
    ]
    result = run("--debug", "ask", tmp_path / "nope", "q")
    assert result.exit_code == 1 and "Traceback" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ")


def test_an_unexpected_error_is_one_line_with_a_debug_hint(tmp_path, monkeypatch):
    import cli.commands

    def boom(path):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli.commands, "_is_memory", boom)
    result = run("inspect", tmp_path)
    assert result.exit_code == 1
    assert error_lines(result) == [
        "error: RuntimeError: boom second line",
        "hint: run with --debug to see the traceback",
    ]


def test_unknown_options_are_usage_errors():
    result = run("ask", "m", "q", "--ratio", "0.1")
    assert result.exit_code == 2
    error, hint = error_lines(result)
    assert error == "error: No such option: --ratio" and hint == "hint: see 'streamvid ask --help'"


# -- the README's options tables are the commands' options ------------------------------------------


def _commands():
    from typer.main import get_command

    root = get_command(app)
    yield "streamvid", root
    for name, command in root.commands.items():
        subs = getattr(command, "commands", None)  # a group: bench, cluster
        if subs:
            for sub, leaf in subs.items():
                yield f"streamvid {name} {sub}", leaf
        else:
            yield f"streamvid {name}", command


def _default(param) -> str:
    if param.required:
        return "required"
    if param.default is None or param.default is False:
        return ""
    if isinstance(param.default, float) and math.isfinite(param.default):
        return f"{param.default:g}"
    return str(param.default)


def option_tables() -> str:
    """The markdown the README holds under '#### `streamvid ...`' headings, one table per command."""
    out = []
    for title, command in _commands():
        rows = []
        for p in command.params:
            if p.name in ("install_completion", "show_completion", "help"):
                continue
            name = p.name.upper() if p.param_type_name == "argument" else ", ".join(p.opts + p.secondary_opts)
            rows.append(f"| `{name}` | {_default(p)} | {(p.help or '').replace('|', '/').replace('<', '&lt;')} |")
        out.append(f"#### `{title}`\n\n| option | default | what it sets |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(out)


def test_readme_tables_match_the_commands():
    readme = (ROOT / "README.md").read_text()
    for table in option_tables().split("\n#### ")[0:]:
        table = table if table.startswith("#### ") else "#### " + table
        assert table.strip() in readme, f"README.md lacks or differs from:\n{table}"


def test_help_lists_what_the_tables_list():
    for title, command in _commands():
        args = title.split()[1:]
        result = run(*args, "--help")
        assert result.exit_code == 0, result.output
        for p in command.params:
            if p.param_type_name == "option" and p.name not in ("install_completion", "show_completion"):
                assert p.opts[0] in result.output, (title, p.opts[0])


if __name__ == "__main__":  # print the README tables: python tests/test_cli_errors.py
    print(option_tables())
