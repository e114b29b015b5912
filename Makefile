# The two Quick start commands. Each installs what it needs first (idempotent, cached).
.PHONY: demo test bootstrap images

bootstrap:
	./scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/modelpilot demo

test: bootstrap
	./scripts/test.sh

# Both container images (needs a Docker engine; not part of the Quick start).
images:
	./scripts/build-images.sh
