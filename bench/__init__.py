"""Everything that measures: benchmarks, quality readouts, the evaluation suite."""
