"""A LangChain chat model that calls the video tools.

    python examples/langchain_agent.py my.memory "When did the delivery van arrive, and what did it unload?"
    python examples/langchain_agent.py my.memory "..." --chat openai:gpt-4o-mini
        (a real chat model needs `pip install langchain langchain-openai` or another provider)

Without --chat, a scripted stand-in chat model issues the tool calls, so the flow
runs offline: search for the moment, then ask the Video-LLM about it.
"""

import argparse
from pathlib import Path

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage

from agents import VideoQA
from agents.langchain import VideoMemoryTool, VideoSearchTool
from memory import TokenMemory
from streamvid.embedders import DEFAULT_EMBEDDER, load_embedder
from streamvid.models import load_adapter

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("memory", type=Path, help="a memory made by `streamvid ingest`")
parser.add_argument("question")
parser.add_argument("--model", default="llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
parser.add_argument("--embedder", default=DEFAULT_EMBEDDER)
parser.add_argument("--chat", default=None, help="provider:model for langchain's init_chat_model")
args = parser.parse_args()

qa = VideoQA(load_adapter(args.model), TokenMemory(args.memory, read_only=True), load_embedder(args.embedder))
tools = {t.name: t for t in (VideoSearchTool(qa=qa), VideoMemoryTool(qa=qa))}

if args.chat:
    from langchain.chat_models import init_chat_model

    chat = init_chat_model(args.chat).bind_tools(list(tools.values()))
else:  # a scripted stand-in: one round of tool calls, then a summary
    chat = GenericFakeChatModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        {"name": "video_search", "args": {"question": args.question}, "id": "s1", "type": "tool_call"},
                        {"name": "video_memory", "args": {"question": args.question}, "id": "m1", "type": "tool_call"},
                    ],
                ),
                AIMessage(content="Done: see the tool results above."),
            ]
        )
    )

messages = [HumanMessage(args.question)]
for _ in range(4):  # tool-calling rounds
    reply = chat.invoke(messages)
    messages.append(reply)
    if not reply.tool_calls:
        break
    for call in reply.tool_calls:
        result = tools[call["name"]].invoke(call)  # a ToolMessage; result.artifact holds the raw result
        print(f"[{call['name']}] {result.content}")
        messages.append(result)
print(messages[-1].content)
