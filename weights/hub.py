"""Checkpoints by name: ``"timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"``, ``"google/vit-base-patch16-224"``.

A name is a Hugging Face Hub repository id (``owner/name``, optionally
``hf-hub:`` in front and ``@revision`` behind). Its ``config.json`` and weights
(``model.safetensors``, else ``pytorch_model.bin``) are looked for first in our
own folder ``$NUMPY_VIT_CACHE/owner--name`` (default ``~/.cache/numpy_vit``), so
a machine without network can be given the files by hand; otherwise they are
downloaded with ``huggingface_hub`` (the optional ``hub`` extra, imported only
here), which keeps its own cache. Either way the folder is then read like any
local timm or HF folder.

Without network a name fails in seconds: before downloading, ``offline_reason`` asks whether
``HF_HUB_OFFLINE`` is set and whether the hub's host (or the HTTPS proxy) answers within
``CONNECT_TIMEOUT_S``; if not, only huggingface_hub's own cache is looked in (its offline mode), so
its retries (about 24 s of back-off) never start.
"""
from __future__ import annotations

import os
import re
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass

from numpy_vit.errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OPTIONAL_FILES = ("preprocessor_config.json",)
# names ending like this are files someone meant to load from disk, never repositories to download
LOCAL_SUFFIXES = (".npz", ".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle", ".json", ".h5",
                  ".msgpack", ".onnx", ".zip", ".tar", ".gz")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
CONNECT_TIMEOUT_S = 1.5  # a reachable hub answers a TCP connect in well under a second


@dataclass(frozen=True)
class HubName:
    repo_id: str            # "owner/name"
    revision: str = "main"  # branch, tag or commit

    @property
    def folder_name(self) -> str:
        return self.repo_id.replace("/", "--") + ("" if self.revision == "main" else f"@{self.revision}")

    def url(self, filename: str) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision}/{filename}"


def parse_name(name: str):
    """A HubName if ``name`` reads as a hub repository id, else None."""
    if not isinstance(name, str):
        return None
    text = name
    for prefix in ("hf-hub:", "hf_hub:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    repo_id, _, revision = text.partition("@")
    if not _REPO_ID.match(repo_id) or repo_id.lower().endswith(LOCAL_SUFFIXES):
        return None
    return HubName(repo_id, revision or "main")


def cache_root() -> str:
    return os.environ.get("NUMPY_VIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "numpy_vit")


def local_folder(hub: HubName) -> str:
    """Where files put by hand for this name are looked for."""
    return os.path.join(cache_root(), hub.folder_name)


def has_checkpoint(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "config.json")) and \
        any(os.path.isfile(os.path.join(folder, f)) for f in WEIGHT_FILES)


def how_to_get(hub: HubName, why: str, install: bool = True) -> str:
    folder = local_folder(hub)
    first = ("install the hub extra (pip install 'numpy-vit[hub]') on a machine with network" if install
             else "connect to the network and load the same name again")
    return (f"no local file or folder {hub.repo_id!r}, and it cannot be loaded as a hub name: {why}. Either {first}, "
            f"or download {hub.url('config.json')} and {hub.url(WEIGHT_FILES[0])} (or {WEIGHT_FILES[1]}, which needs "
            f"torch) into {folder}/ and load the same name again (or pass that folder's path)")


def hub_address():
    """(host, port) a download connects to first: the HTTPS proxy if one is set, else the hub's endpoint."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(urllib.parse.urlsplit(endpoint).hostname or ""):
        endpoint = proxy if "://" in proxy else f"http://{proxy}"
    url = urllib.parse.urlsplit(endpoint)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _connects(address, timeout: float):
    """None if a TCP connection to ``address`` opens within ``timeout`` seconds, else why not. The name lookup
    has no timeout of its own, so the attempt runs on a thread that is given up on after ``timeout``."""
    outcome = []

    def attempt():
        try:
            socket.create_connection(address, timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def offline_reason():
    """Why the hub cannot be reached now (HF_HUB_OFFLINE is set, or its host does not answer), or None."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set (unset it to download)"
    host, port = hub_address()
    why = _connects((host, port), CONNECT_TIMEOUT_S)
    return None if why is None else f"no network: {host}:{port} cannot be reached ({why})"


def _from_hf_cache(hub: HubName):
    """The snapshot folder of ``hub`` in huggingface_hub's own cache when it holds config.json and weights
    (what its offline mode would load), else None. Touches no network."""
    from huggingface_hub import hf_hub_download

    found = []
    for filename in ("config.json", *WEIGHT_FILES):
        try:
            found.append(hf_hub_download(hub.repo_id, filename, revision=hub.revision, local_files_only=True))
        except Exception:  # not in the cache (LocalEntryNotFoundError), or an unreadable cache entry
            continue
    folder = os.path.dirname(found[0]) if found else None
    return folder if folder and has_checkpoint(folder) else None


def _download(hub: HubName) -> str:
    """Fetch config.json and the weights into huggingface_hub's cache; return the snapshot folder."""
    from huggingface_hub import hf_hub_download
    try:  # the file is not in the repository (not: the network is down, which is LocalEntryNotFoundError)
        from huggingface_hub.errors import RemoteEntryNotFoundError as EntryNotFoundError
    except ImportError:  # huggingface_hub < 1.0
        from huggingface_hub.utils import EntryNotFoundError

    config_path = hf_hub_download(hub.repo_id, "config.json", revision=hub.revision)
    last_error = None
    for filename in WEIGHT_FILES:
        try:
            hf_hub_download(hub.repo_id, filename, revision=hub.revision)
            break
        except EntryNotFoundError as e:
            last_error = e
    else:
        raise CheckpointError(how_to_get(hub, f"the repository has none of {', '.join(WEIGHT_FILES)} ({last_error})"))
    for filename in OPTIONAL_FILES:
        try:
            hf_hub_download(hub.repo_id, filename, revision=hub.revision)
        except EntryNotFoundError:
            pass
    return os.path.dirname(config_path)


def fetch(name: str) -> str:
    """The local folder holding ``name``'s config.json and weights, downloading them if need be."""
    hub = parse_name(name)
    if hub is None:
        raise CheckpointError(f"{name!r} is not a hub name of the form 'owner/name' (e.g. "
                              f"'timm/vit_base_patch16_224.augreg2_in21k_ft_in1k' or 'google/vit-base-patch16-224')")
    folder = local_folder(hub)
    if has_checkpoint(folder):
        return folder
    try:
        import huggingface_hub  # noqa: F401  (the optional extra)
    except ImportError:
        raise CheckpointError(how_to_get(hub, "huggingface_hub is not installed")) from None
    offline = offline_reason()
    if offline is not None:
        cached = _from_hf_cache(hub)
        if cached is not None:
            return cached
        raise CheckpointError(how_to_get(hub, f"{offline}, and huggingface_hub's cache does not hold it",
                                         install=False))
    try:
        return _download(hub)
    except CheckpointError:
        raise
    except Exception as e:  # unknown repository, gated repository, the network dropped mid-way, ...
        raise CheckpointError(how_to_get(hub, f"the download failed ({type(e).__name__}: "
                                              f"{str(e).splitlines()[0] if str(e) else ''})", install=False)) from None
