"""The audit trail: ledger (chain, checkpoints, verify) and export (json, csv, html)."""
