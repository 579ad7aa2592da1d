"""Whole-graph analyses: composition of per-operator bounds, lower bounds with witnesses."""
