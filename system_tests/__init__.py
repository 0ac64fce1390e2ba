"""Tests that run the built image and boot the user data under real systemd (``make image-test``,
``make instance-test``); not part of ``make test`` (they need root, buildah and systemd-nspawn)."""
