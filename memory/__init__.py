"""The token memory: compressed segments under a global cap, FAISS-indexed, persistent.

Imports flow one way: ``agents -> memory -> streamvid``. The memory builds on
``streamvid.compress`` (CABA budgets via ``caba_weights``/``allocate_budgets`` and
``remerge``); see docs/architecture.md for what lives here.
"""
