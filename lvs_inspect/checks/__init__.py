"""Checks: rule files (rules/*.yaml) evaluated over whole tables, producing Findings."""
