"""Prompt files and tables: reading Parquet/JSON Lines rows, prompts and their columns.

Cheap to import: ``pyarrow`` is imported where a Parquet file is read.
"""
