"""Datasets: record schema, procedural head generator, writers, real-layout readers, Grain pipeline."""
