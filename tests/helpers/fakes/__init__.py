"""Small local fakes of cloud HTTP APIs for the contract tests (real SDK clients talk to them)."""
