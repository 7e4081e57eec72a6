"""Long-video Q&A: ingest a long file once into a capped memory, then ask several questions.

    python examples/long_video_qa.py lecture.mp4 "What is on the first slide?" "When does the demo start?"
    python examples/long_video_qa.py video.mp4 "..." --model /models/llava-ov-0.5b --embedder none   # offline

The memory directory is reused on later runs (delete it to re-ingest).
"""

import argparse
from pathlib import Path

from agents import VideoQA, build_ingest
from memory import TokenMemory
from streamvid import create_compressor
from streamvid.embedders import DEFAULT_EMBEDDER, load_embedder
from streamvid.models import load_adapter

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("video", type=Path)
parser.add_argument("questions", nargs="+")
parser.add_argument("--model", default="llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
parser.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="CLIP/SigLIP name or dir, or 'none'")
parser.add_argument("--memory", type=Path, default=None, help="default: <video>.memory")
parser.add_argument("--cap-tokens", type=int, default=100_000)
parser.add_argument("--ratio", type=float, default=0.15)
parser.add_argument("--fps", type=float, default=1.0)
args = parser.parse_args()

llm = load_adapter(args.model)
embedder = load_embedder(args.embedder)
memory_dir = args.memory or args.video.with_suffix(".memory")
memory = TokenMemory(memory_dir, cap_tokens=args.cap_tokens)
if memory.tokens_held == 0:
    compressor = create_compressor("infomerge", ratio=args.ratio)
    stats = build_ingest(args.video, memory, llm, embedder, compressor, fps=args.fps, progress=True).run()
    print(
        f"ingested {stats.media_seconds / 60:.1f} min in {stats.segments} segments, "
        f"{stats.realtime_factor:.1f}x real time; {memory.tokens_held} tokens held"
    )

qa = VideoQA(llm, memory, embedder, k=4)
for question in args.questions:
    answer = qa.ask(question)
    moments = ", ".join(f"{u.start:.0f}-{u.end:.0f}s" for u in answer.segments)
    print(f"\nQ: {question}\nA: {answer.text}\n   (from {moments}; {answer.timings['total']:.2f} s)")
memory.close()
