"""The core contract: records and the reject policy, configuration, errors, the release schema, metrics.

Imports nothing from the rest of the project (import-linter checks it)."""
