"""A sample video to try streamvid on: four scenes, each a coloured square moving across a plain background."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["SAMPLE_SCENES", "write_sample_video"]

SAMPLE_SCENES = [  # (background RGB, square RGB, caption)
    ((30, 90, 200), (250, 220, 0), "a yellow square on a blue background"),
    ((20, 140, 40), (230, 30, 30), "a red square on a green background"),
    ((240, 240, 240), (10, 10, 10), "a black square on a white background"),
    ((120, 30, 120), (255, 140, 0), "an orange square on a purple background"),
]


def write_sample_video(
    path: Path, seconds_per_scene: float = 6.0, fps: int = 8, size: tuple[int, int] = (320, 240)
) -> list[tuple[float, float, str]]:
    """A short video of four scenes, each a coloured square moving across a plain background.

    Returns (start, end, caption) per scene, so answers can be checked by eye.
    """
    import av

    width, height = size
    scenes = []
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 1_500_000
        frame_index = 0
        for background, square, caption in SAMPLE_SCENES:
            start = frame_index / fps
            for i in range(round(seconds_per_scene * fps)):
                img = np.empty((height, width, 3), dtype=np.uint8)
                img[:] = background
                x = int((width - 60) * i / max(1, seconds_per_scene * fps - 1))
                img[height // 2 - 30 : height // 2 + 30, x : x + 60] = square
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = frame_index
                out.mux(stream.encode(frame))
                frame_index += 1
            scenes.append((start, frame_index / fps, caption))
        out.mux(stream.encode(None))
    return scenes
