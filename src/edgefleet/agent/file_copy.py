"""One file up to the device or down from it, in a remote session (``edgefleet devices
cp``). Down: a regular file of at most ``MAX_COPY_BYTES``, streamed. Up: the bytes go into
a temporary file beside the target, which replaces the target only once all of them
(exactly the size announced) arrived and reached the disk; a session that ends early
leaves the target as it was."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from edgefleet.protocol.sessions import MAX_COPY_BYTES, MAX_FRAME_BYTES, Eof, Exit, Refused, SessionOffer
from edgefleet.web.channel import Channel


def copy_refusal(offer: SessionOffer) -> Refused | None:
    """Why the device cannot do this copy, before the session begins (None: it can)."""
    assert offer.path is not None
    path = Path(offer.path)
    try:
        if offer.direction == "get":
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                return Refused(code="not_a_file", reason=f"{path} is not a regular file")
            if info.st_size > MAX_COPY_BYTES:
                return Refused(code="too_large", reason=f"{path} has {info.st_size} bytes; at most "
                                                        f"{MAX_COPY_BYTES} go in one copy")
            return None
        if not path.parent.is_dir():
            return Refused(code="no_directory", reason=f"{path.parent} is not a directory on the device")
        if path.is_dir():
            return Refused(code="is_a_directory", reason=f"{path} is a directory")
    except OSError as exc:
        return Refused(code="unreadable", reason=f"{path}: {exc.strerror}")
    return None


async def send_file(channel: Channel, offer: SessionOffer) -> None:
    assert offer.path is not None
    handle = await asyncio.to_thread(Path(offer.path).open, "rb")
    try:
        sent = 0
        while sent <= MAX_COPY_BYTES and (chunk := await asyncio.to_thread(handle.read, MAX_FRAME_BYTES)):
            await channel.send(chunk)
            sent += len(chunk)
    finally:
        handle.close()
    await channel.control(Exit(code=0))


def _commit(handle: BinaryIO, partial: Path, target: Path) -> None:
    """The received bytes on disk, then in place of the target (the rename made durable)."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(partial, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def receive_file(channel: Channel, offer: SessionOffer) -> None:
    assert offer.path is not None
    assert offer.size is not None
    target = Path(offer.path)
    partial = target.with_name(f".{target.name}.edgefleet-{offer.id}")
    handle: BinaryIO = await asyncio.to_thread(partial.open, "xb")
    received, complete = 0, False
    try:
        while (frame := await channel.receive()) is not None:
            if isinstance(frame, bytes):
                received += len(frame)
                if received > offer.size:
                    break  # more than announced: nothing is applied
                await asyncio.to_thread(handle.write, frame)
            elif isinstance(frame, Eof):
                complete = received == offer.size
                break
        else:
            return  # the link dropped mid-copy: the target stays as it was
        if complete:
            await asyncio.to_thread(_commit, handle, partial, target)
        await channel.control(Exit(code=0 if complete else 1))
    finally:
        handle.close()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
