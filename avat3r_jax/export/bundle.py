"""The inference bundle: a directory a GPU host can run an avatar from, without the training code.

Layout::

    manifest.json         format name and version, library versions, file checksums, parameter shapes
    config.json           the full ml-collections config (``config.to_dict()``)
    params.safetensors    the model parameters, flat ``a/b/0/kernel`` names (float32 or bfloat16)
    <name>.jax_export     serialized ``jax.export`` functions for fixed input shapes (see ``exporting``)

``load_bundle`` refuses a bundle whose format version differs from this code's, whose manifest does
not list (with a checksum) every file the bundle needs or names a file outside the bundle, whose files
do not match those checksums, or whose parameters do not fit the model its config describes.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import pathlib
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
from safetensors.numpy import load_file, save_file

import avat3r_jax
from avat3r_jax.export.config_io import ConfigError, config_from_dict, config_to_json, model_differences
from avat3r_jax.export.paths import contained

BUNDLE_FORMAT = "avat3r-bundle"
BUNDLE_VERSION = 1
MANIFEST, CONFIG, PARAMS = "manifest.json", "config.json", "params.safetensors"
EXPORT_SUFFIX = ".jax_export"


class BundleError(ValueError):
    """A bundle that is missing, corrupt, of another format version or from another config."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    directory: pathlib.Path
    manifest: dict[str, Any]
    config: ml_collections.ConfigDict
    params: dict[str, np.ndarray]  # flat name -> array, in the stored dtype

    @property
    def export_names(self) -> list[str]:
        return sorted(self.manifest["exports"])

    def exported(self, name: str) -> jax.export.Exported:
        """Deserializes the exported function ``name`` (its checksum was verified at load)."""
        if name not in self.manifest["exports"]:
            raise BundleError(f"bundle {self.directory} has no exported function {name!r}; it has {self.export_names}")
        return jax.export.deserialize(bytearray((self.directory / self.manifest["exports"][name]["file"]).read_bytes()))


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bundle(
    directory: str | pathlib.Path,
    config: ml_collections.ConfigDict,
    params: dict[str, np.ndarray],
    exports: dict[str, jax.export.Exported],
    source: dict[str, Any],
) -> dict[str, Any]:
    """Writes a bundle (``params`` already in the dtype to store); returns its manifest."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(config_to_json(config))
    save_file(params, directory / PARAMS, metadata={"format": BUNDLE_FORMAT})
    export_entries = {}
    for name, exported in sorted(exports.items()):
        file = f"{name}{EXPORT_SUFFIX}"
        (directory / file).write_bytes(exported.serialize())
        export_entries[name] = {
            "file": file,
            "platforms": list(exported.platforms),
            "inputs": [_aval_entry(path, aval) for path, aval in _with_paths(exported.in_tree, exported.in_avals)],
            "outputs": [_aval_entry(path, aval) for path, aval in _with_paths(exported.out_tree, exported.out_avals)],
        }
    files = [CONFIG, PARAMS] + [entry["file"] for entry in export_entries.values()]
    dtypes = sorted({str(value.dtype) for value in params.values()})
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": source,
        "versions": {"avat3r_jax": avat3r_jax.__version__, "jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__},
        "params": {
            "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "count": int(sum(value.size for value in params.values())),
            "shapes": {name: list(value.shape) for name, value in params.items()},
        },
        "exports": export_entries,
        "files": {file: {"sha256": sha256_of(directory / file), "bytes": (directory / file).stat().st_size} for file in files},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _with_paths(tree, avals) -> list[tuple[str, Any]]:
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(jax.tree.unflatten(tree, avals))[0]]
    return list(zip(paths, avals))


def _aval_entry(path: str, aval) -> dict[str, Any]:
    return {"path": path, "shape": [int(d) for d in aval.shape], "dtype": str(aval.dtype)}


def read_manifest(directory: str | pathlib.Path) -> dict[str, Any]:
    """The manifest, after checking the format name and version and every file's checksum."""
    directory = pathlib.Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise BundleError(f"{directory} is not an inference bundle: {MANIFEST} is missing (make one with avat3r-export)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path} is not valid JSON: {error}") from error
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r} is not {BUNDLE_FORMAT!r}")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{path}: bundle format version {manifest.get('version')!r} (written by avat3r_jax "
            f"{manifest.get('versions', {}).get('avat3r_jax')}) does not match this code's version {BUNDLE_VERSION}; "
            "export the checkpoint again with this version"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("exports"), dict):
        raise BundleError(f"{path}: no 'files' and 'exports' tables (not written by avat3r-export?)")
    needed = [CONFIG, PARAMS] + [entry.get("file") if isinstance(entry, dict) else None for entry in manifest["exports"].values()]
    unlisted = [file for file in needed if file not in files]
    if unlisted:
        raise BundleError(f"bundle {directory}: its manifest gives no checksum for {unlisted}, which the bundle needs")
    for file, entry in files.items():
        target = contained(directory, file)
        if target is None:
            raise BundleError(f"bundle {directory}: manifest file name {file!r} is not a path inside the bundle")
        if not target.is_file():
            raise BundleError(f"bundle {directory} is incomplete: {file} is missing")
        if not isinstance(entry, dict) or sha256_of(target) != entry.get("sha256"):
            raise BundleError(f"bundle {directory}: checksum of {file} does not match the manifest (file corrupt or modified)")
    return manifest


def load_bundle(directory: str | pathlib.Path, expected_config: ml_collections.ConfigDict | None = None) -> Bundle:
    """Reads and verifies a bundle; with ``expected_config``, also refuses one whose model differs from it."""
    directory = pathlib.Path(directory)
    manifest = read_manifest(directory)
    try:
        config = config_from_dict(json.loads((directory / CONFIG).read_text()), str(directory / CONFIG))
    except ConfigError as error:
        raise BundleError(str(error)) from error
    if expected_config is not None:
        differences = model_differences(config, expected_config)
        if differences:
            listing = "\n  ".join(differences)
            raise BundleError(f"bundle {directory} was exported from another config; differing fields (bundle vs given):\n  {listing}")
    params = load_file(directory / PARAMS)
    shapes = {name: tuple(shape) for name, shape in manifest["params"]["shapes"].items()}
    stored = {name: tuple(value.shape) for name, value in params.items()}
    if stored != shapes:
        raise BundleError(f"bundle {directory}: {PARAMS} does not hold the parameters its manifest lists")
    return Bundle(directory, manifest, config, params)
