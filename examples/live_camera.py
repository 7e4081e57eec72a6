"""A live camera into a memory, with questions typed while it runs.

    python examples/live_camera.py rtsp://192.0.2.10/stream --memory cam.memory
    python examples/live_camera.py /dev/video0 --model /models/llava-ov-0.5b --embedder none   # offline

Type a question and press Enter ('status' shows the session, an empty line quits).
Several cameras: give several sources; each becomes its own stream in one memory.
"""

import argparse
from pathlib import Path

from agents import LiveSession
from memory import TokenMemory
from streamvid import create_compressor
from streamvid.embedders import DEFAULT_EMBEDDER, load_embedder
from streamvid.models import load_adapter

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("sources", nargs="+", help="rtsp/http/tcp/udp URLs, /dev/videoN or files")
parser.add_argument("--memory", type=Path, default=Path("live.memory"))
parser.add_argument("--model", default="llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
parser.add_argument("--embedder", default=DEFAULT_EMBEDDER)
parser.add_argument("--cap-tokens", type=int, default=50_000)
parser.add_argument("--fps", type=float, default=1.0)
args = parser.parse_args()

llm = load_adapter(args.model)
memory = TokenMemory(args.memory, cap_tokens=args.cap_tokens, recency_half_life_s=3600)
sources = {f"cam{i + 1}": src for i, src in enumerate(args.sources)}
session = LiveSession(
    sources,
    llm,
    memory,
    load_embedder(args.embedder),
    create_compressor("infomerge", ratio=0.15),
    fps=args.fps,
    on_segment=lambda stream, sid: print(f"[{stream}] stored segment {sid}"),
)
with session:
    while True:
        question = input("> ").strip()
        if not question:
            break
        if question == "status":
            print(session.status())
            continue
        answer = session.ask(question, on_text=lambda piece: print(piece, end="", flush=True))
        print(f"\n   (from {', '.join(f'{u.stream} {u.start:.0f}-{u.end:.0f}s' for u in answer.segments)})")
memory.close()
