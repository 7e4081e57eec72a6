"""Stored token formats side by side: float16, int8 and int4 (``token_dtype``).

Two measurements, one part (``streamvid bench quantized``, or ``--parts quantized`` of the suite):

- the class-query readout of the stored tokens (``bench.readout.run_quantized``): each clip's
  tokens compressed at each retention, stored in each format and read back, then scored like
  the readout part, against all tokens and against float16 storage;
- the needle stream per format under the same token cap and the same byte cap
  (``bench.needles.run_dtypes``): which needles survive, retrieval recall, tokens held.
"""

from __future__ import annotations

from typing import Any

from bench.parts import Part

__all__ = ["PART", "markdown", "run", "summary"]


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    from bench.needles import run_dtypes
    from bench.readout import run_quantized

    return {"readout": run_quantized(profile, progress), "needles": run_dtypes(profile, progress)}


def summary(result: dict[str, Any]) -> list[str]:
    """The result as printed lines: the readout findings and the needle table."""
    from bench.needles import dtype_table
    from bench.readout import quantized_findings, quantized_table

    return [quantized_table(result["readout"]), *quantized_findings(result["readout"]), dtype_table(result["needles"])]


def markdown(result: dict[str, Any], images: str) -> str:
    from bench.needles import dtype_markdown
    from bench.readout import quantized_markdown

    return quantized_markdown(result["readout"]) + "\n\n" + dtype_markdown(result["needles"])


PART = Part("quantized", run, markdown, needs_video=True)
