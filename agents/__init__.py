"""Question answering over a token memory, live sessions and the LangChain tools.

Imports flow one way: ``agents -> memory -> streamvid``; see docs/architecture.md.
"""
