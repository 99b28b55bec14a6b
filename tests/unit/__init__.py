"""Unit tests. A package so that a module may share its name with an integration test
(tests/unit/test_anonymize.py and tests/integration/test_anonymize.py)."""
