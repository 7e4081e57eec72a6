"""LangChain glue: tools and a retriever over a token memory (hooks only)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

from agents.qa import VideoQA
from streamvid.clock import format_clock
from streamvid.errors import StreamvidError

__all__ = ["VideoQuestion", "VideoMemoryTool", "VideoSearchTool", "VideoMomentRetriever"]


class VideoQuestion(BaseModel):
    question: str = Field(description="What to ask about the video, in plain language")
    start: float | None = Field(None, description="Only look at video after this time (seconds)")
    end: float | None = Field(None, description="Only look at video before this time (seconds)")
    stream: str | None = Field(None, description="Only this camera/stream id")


def _range(start: float | None, end: float | None) -> tuple[float, float] | None:
    if start is None and end is None:
        return None
    return (start if start is not None else 0.0, end if end is not None else float("inf"))


class VideoMemoryTool(BaseTool):
    """Answers a question about the videos in memory with the Video-LLM."""

    name: str = "video_memory"
    description: str = (
        "Answer a question about recorded or live video. Optionally restrict to a time range in "
        "seconds (start, end) or to one stream. Returns the answer and the moments it used."
    )
    args_schema: type[BaseModel] = VideoQuestion
    response_format: str = "content_and_artifact"
    qa: Any = Field(exclude=True)
    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _run(
        self,
        question: str,
        start: float | None = None,
        end: float | None = None,
        stream: str | None = None,
        run_manager: Any = None,
    ) -> tuple[str, Any]:
        try:
            answer = self.qa.ask(question, time_range=_range(start, end), streams=[stream] if stream else None)
        except StreamvidError as err:
            raise ToolException(str(err)) from None
        moments = "; ".join(f"{u.stream} {format_clock(u.start)}-{format_clock(u.end)}" for u in answer.segments)
        return (f"{answer.text}\n(moments used: {moments or 'none'})", answer)


class VideoSearchTool(BaseTool):
    """Finds the moments that match a description, without calling the Video-LLM."""

    name: str = "video_search"
    description: str = (
        "Find when something appears in the videos. Returns time ranges (seconds) with scores, best first."
    )
    args_schema: type[BaseModel] = VideoQuestion
    response_format: str = "content_and_artifact"
    qa: Any = Field(exclude=True)
    k: int = 5
    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _run(
        self,
        question: str,
        start: float | None = None,
        end: float | None = None,
        stream: str | None = None,
        run_manager: Any = None,
    ) -> tuple[str, Any]:
        qa: VideoQA = self.qa
        try:
            found = qa.retrieve(question, self.k, _range(start, end), [stream] if stream else None)
        except StreamvidError as err:
            raise ToolException(str(err)) from None
        moments = [
            {"id": s.id, "stream": s.stream, "start": s.start, "end": s.end, "score": score, "evicted": s.evicted}
            for s, score in found
        ]
        if not moments:
            return ("No matching moments.", moments)
        lines = [
            f"{m['stream']} {format_clock(m['start'])}-{format_clock(m['end'])}"
            + (f" score {m['score']:.3f}" if m["score"] is not None else "")
            + (" (evicted: nothing retained)" if m["evicted"] else "")
            for m in moments
        ]
        return ("\n".join(lines), moments)


class VideoMomentRetriever(BaseRetriever):
    """Documents for the moments that match a query; metadata: stream, start, end, score, id."""

    qa: Any = Field(exclude=True)
    k: int = 4
    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        found = self.qa.retrieve(query, self.k, None, None)
        return [
            Document(
                page_content=f"{s.stream} {format_clock(s.start)}-{format_clock(s.end)}"
                + (" (evicted: nothing retained)" if s.evicted else ""),
                metadata={
                    "id": s.id,
                    "stream": s.stream,
                    "start": s.start,
                    "end": s.end,
                    "score": score,
                    "evicted": s.evicted,
                },
            )
            for s, score in found
        ]
