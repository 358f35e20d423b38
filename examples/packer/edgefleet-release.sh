#!/usr/bin/env bash
# Packer shell-local post-processor: record the image Packer just built as a new, unsigned
# edgefleet release (length, hashes, hardware types, release counter, measurements).
# Inputs (environment): IMAGE, VERSION, COUNTER, HARDWARE_IDS (comma-separated),
# EDGEFLEET_RELEASE_WORKSPACE, optional MEASUREMENTS ("PCR=sha256hex ..."), EDGEFLEET (the
# command, default `edgefleet`).
set -euo pipefail
: "${IMAGE:?IMAGE is the built image}" "${VERSION:?}" "${COUNTER:?}" "${HARDWARE_IDS:?}"
: "${EDGEFLEET_RELEASE_WORKSPACE:?create it with edgefleet keys init}"

args=()
IFS=',' read -r -a hardware <<<"$HARDWARE_IDS"
for hw in "${hardware[@]}"; do args+=(--hardware-id "$hw"); done
for measurement in ${MEASUREMENTS:-}; do args+=(--measurement "$measurement"); done

${EDGEFLEET:-edgefleet} release create --workspace "$EDGEFLEET_RELEASE_WORKSPACE" \
    --version "$VERSION" --image "$IMAGE" --counter "$COUNTER" "${args[@]}"
echo "release $VERSION recorded; sign it with offline keys: edgefleet release sign --key targets-1 ..." >&2
