"""Golden images: ``edgefleet image build`` (Debian packages -> erofs + dm-verity slots,
a UKI, systemd-boot, a GPT disk) and the reference values they predict (``predict``).
See docs/images.md."""
