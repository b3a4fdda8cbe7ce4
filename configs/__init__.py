"""The shipped configuration of every source (``NAME.yaml``), installed as package data with the project."""
