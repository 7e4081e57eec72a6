"""Evaluation: fidelity metrics and speed benchmarks (see ../shared/specs/evaluation.md)."""

from streamvid.eval.metrics import attention_fidelity

__all__ = ["attention_fidelity"]
