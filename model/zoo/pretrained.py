"""A published network, by name, to a verified schema-1 ONNX file: its weights fetched into
the cache and checked, converted, exported with where they came from and their figures."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from model.errors import FCNError
from model.zoo.download import DIGEST_HEX_DIGITS, cache_dir, fetch, file_digest
from model.zoo.registry import Pretrained, lookup

T = TypeVar("T")
# The environment variable that points every download at a mirror of the files.
MIRROR_VARIABLE = "FCN_MIRROR"


class PretrainedError(FCNError, ValueError):
    """Weights that were fetched but are not what their name promises; the message says
    what was done with them and what to do."""


@dataclass(frozen=True)
class Weights:
    """A fetched weights file and how it was checked."""

    path: Path
    url: str
    sha1: str  # of the file, whatever it was checked by
    checked: str  # "SHA1 <hex>", "SHA256 <hex>...", or "" when no digest was expected


@dataclass(frozen=True)
class Exported:
    """A model file written by ``export_pretrained``, or found up to date."""

    path: Path
    entry: Pretrained
    weights: Weights | None  # None when the file was up to date and nothing was fetched


def model_path(name: str, out_dir: str | os.PathLike[str]) -> Path:
    """Where ``export_pretrained`` writes ``name``: ``OUT_DIR/NAME.onnx``."""
    return Path(out_dir) / f"{name}.onnx"


def weights_url(entry: Pretrained, mirror: str | None = None) -> str:
    """The URL of ``entry``'s file, on ``mirror`` (a base URL; default ``$FCN_MIRROR``) when
    one is given: ``MIRROR/FILE_NAME``."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_VARIABLE, "")
    return f"{mirror.rstrip('/')}/{entry.file_name}" if mirror else entry.url


def fetch_weights(
    entry: Pretrained,
    *,
    cache: str | os.PathLike[str] | None = None,
    mirror: str | None = None,
    sha1: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Weights:
    """``entry``'s weights in the cache, fetched if need be and checked by ``sha1`` or
    ``sha256`` when given, else by the digest the registry knows, if any."""
    if not sha1 and not sha256:
        sha1, sha256 = entry.sha1, entry.sha256
    url = weights_url(entry, mirror)
    path = fetch(url, sha1=sha1, sha256=sha256, cache=cache, progress=progress)
    checked = f"SHA1 {sha1.lower()}" if sha1 else f"SHA256 {sha256.lower()}" if sha256 else ""
    if sha256 and len(sha256) < 64:
        checked += "..."
    # fetch has just checked a whole SHA1; read the file again only for any other check.
    whole_sha1 = sha1 is not None and len(sha1) == DIGEST_HEX_DIGITS["sha1"]
    digest = sha1.lower() if sha1 and whole_sha1 else file_digest(path, "sha1")
    return Weights(path, url, digest, checked)


def origin(entry: Pretrained, weights: Weights) -> dict[str, str]:
    """The ``fcn.origin`` of a model made from ``weights``."""
    return {
        "name": entry.name,
        "url": weights.url,
        "file": entry.file_name,
        "sha1": weights.sha1,
        "checked": weights.checked or "by conversion only: no published digest",
        "metrics": entry.metrics_on,
        "reference": entry.reference,
    }


def up_to_date(
    path: Path, entry: Pretrained, sha1: str | None = None, sha256: str | None = None
) -> bool:
    """Whether ``path`` is a model file already made from ``entry``'s weights file (whose
    SHA1 is ``sha1`` when given; a required ``sha256`` is checked only by fetching)."""
    if sha256:
        return False
    from contract.schema import MetadataError
    from model.export.metadata import read_metadata

    if not path.is_file():
        return False
    try:
        made_from = read_metadata(path).origin
    except MetadataError:
        return False  # not a model of the contract: make it again
    if sha1 and made_from.get("sha1") != sha1.lower():
        return False
    return made_from.get("name") == entry.name and made_from.get("file") == entry.file_name


def export_pretrained(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    mirror: str | None = None,
    sha1: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    verify: bool = True,
    progress: bool = True,
) -> Exported:
    """Make ``OUT_DIR/NAME.onnx`` from the published weights of ``name``.

    A file there already made from the same weights is kept, without any network access,
    unless ``force``. Otherwise the weights are fetched into ``cache`` (default
    ``cache_dir()``), checked, converted and exported; the ONNX file is verified against
    the network (unless not ``verify``) before it takes its place, so any error leaves no
    model file. Weights with no digest to check that fail to convert leave the cache too.
    """
    entry = lookup(name)
    target = model_path(name, out_dir)
    if not force and up_to_date(target, entry, sha1, sha256):
        return Exported(target, entry, None)
    weights = fetch_weights(
        entry, cache=cache, mirror=mirror, sha1=sha1, sha256=sha256, progress=progress
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.kind == "caffe":
        _export_caffe(entry, weights, target, verify)
    else:
        _export_torchvision(entry, weights, target, verify)
    return Exported(target, entry, weights)


def _converted(weights: Weights, convert: Callable[[], T]) -> T:
    """``convert()`` of the weights' file. Unchecked weights that do not convert are a
    damaged download: they leave the cache, so that the next run fetches them afresh
    instead of failing on them again."""
    try:
        return convert()
    except FCNError as exc:
        if weights.checked:
            raise
        weights.path.unlink(missing_ok=True)
        raise PretrainedError(
            f"{exc}; {weights.path} had no published digest to check, so it was taken for a "
            "damaged download and removed from the cache: run again to download it afresh"
        ) from exc


def _export_caffe(entry: Pretrained, weights: Weights, target: Path, verify: bool) -> None:
    from model.caffe.convert import convert_caffemodel
    from model.export.exporter import export_net
    from model.export.graph import checkpoint_card

    checkpoint = _converted(
        weights, lambda: convert_caffemodel(weights.path, entry.arch, dataset=entry.dataset)
    )
    card = dataclasses.replace(
        checkpoint_card(checkpoint), metrics=dict(entry.metrics), origin=origin(entry, weights)
    )
    net = checkpoint.build_model()
    del checkpoint  # the net holds the only copy of the weights from here on
    export_net(net, card, target, verify=verify, subject=f"the converted {entry.file_name}")


def _export_torchvision(entry: Pretrained, weights: Weights, target: Path, verify: bool) -> None:
    from model.export.torchvision_fcn import export_torchvision_fcn
    from model.nets.torchvision_fcn import NAMES

    if entry.arch not in NAMES:
        raise ValueError(f"{entry.name}: {entry.arch!r} is not one of {', '.join(NAMES)}")
    export_torchvision_fcn(
        entry.arch,
        target,
        weights_path=weights.path,
        verify=verify,
        metrics=entry.metrics,
        origin=origin(entry, weights),
    )


def cached(entry: Pretrained, cache: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``entry``'s weights file is in the cache (not checked here)."""
    return (Path(cache if cache is not None else cache_dir()) / entry.file_name).is_file()
