"""Delta updates: ship only what changed, and rebuild the signed image on the device.

- ``bsdelta``: known-base deltas (bsdiff's matches, zstd-compressed streams), applied
  streaming from the active slot in bounded memory;
- ``index`` and ``assemble``: the any-base content index (4 KiB blocks for block-aligned
  images such as erofs, content-defined chunks otherwise) and the device side that fetches
  only the pieces its seeds lack;
- ``erofs``: reproducible erofs images, which make both small.

Nothing here trusts its input: every file is a signed TUF target or a piece named by the
hash of its content, and the result is verified against the signed image by the caller.
"""
