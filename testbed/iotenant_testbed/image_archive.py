"""A container image as an archive that containerd imports: one layer, its configuration, its name.

The archive is in the layout ``docker save`` writes (``manifest.json`` with ``RepoTags``), which
containerd's importer reads and whose names it normalises exactly as the kubelet's image references
are normalised: an image imported as ``eclipse-mosquitto:2.1.2`` is found by a pod asking for
``eclipse-mosquitto:2.1.2``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def image_config(layer_digest: str, container: dict[str, Any]) -> dict[str, Any]:
    """The image configuration of a one-layer linux/amd64 image (OCI image spec, ``config`` as given)."""
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "iotenant-testbed", "comment": "built without a registry by the local test bed"}],
    }


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mode = 0o644
    archive.addfile(member, io.BytesIO(data))


def write_archive(layer: Path, reference: str, container: dict[str, Any], target: Path) -> str:
    """Write the importable archive of a one-layer image to ``target``; return its configuration digest."""
    layer_digest = _sha256_file(layer)
    config = json.dumps(image_config(layer_digest, container), sort_keys=True).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    manifest = [{"Config": f"{config_digest}.json", "RepoTags": [reference], "Layers": [f"{layer_digest}/layer.tar"]}]
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w") as archive:
        _add_bytes(archive, f"{config_digest}.json", config)
        archive.add(layer, arcname=f"{layer_digest}/layer.tar")
        _add_bytes(archive, "manifest.json", json.dumps(manifest).encode())
    partial.rename(target)
    return config_digest


def layer_from_files(files: dict[str, tuple[bytes, int]], directories: dict[str, tuple[int, int, int]], target: Path) -> None:
    """A layer tar of ``files`` (path -> (content, mode), owned by root) and ``directories``
    (path -> (mode, uid, gid)), for images that need no Debian root filesystem."""
    with tarfile.open(target, "w") as layer:
        for path, (mode, uid, gid) in sorted(directories.items()):
            member = tarfile.TarInfo(path.lstrip("/"))
            member.type, member.mode, member.uid, member.gid = tarfile.DIRTYPE, mode, uid, gid
            layer.addfile(member)
        for path, (content, mode) in sorted(files.items()):
            member = tarfile.TarInfo(path.lstrip("/"))
            member.size, member.mode = len(content), mode
            layer.addfile(member, io.BytesIO(content))
