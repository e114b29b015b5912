# The two Quick start commands. Each installs what it needs first (idempotent, cached).
.PHONY: demo test bootstrap

bootstrap:
	./scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/modelpilot demo

test: bootstrap
	./scripts/test.sh
