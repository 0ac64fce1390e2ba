"""Operator tools: cost estimate, diff, synth summary (entry points in scripts/)."""
