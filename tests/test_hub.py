"""Hub names (owner/name): parsing, the cache, downloads through huggingface_hub (faked), and failing at once,
with a message that says which file and where, when there is no network.
"""
import json
import socket
import sys
import threading
import time

import numpy as np
import pytest

from bad_input_files import SMALL, random_params
from numpy_vit import weights
from numpy_vit.config import ViTConfig
from numpy_vit.errors import CheckpointError
from numpy_vit.weights import hub


# --- hub names -----------------------------------------------------------------------------------------

def test_hub_name_parsing():
    assert hub.parse_name("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k") == \
        hub.HubName("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "main")
    assert hub.parse_name("hf-hub:google/vit-base-patch16-224@v1.0") == hub.HubName("google/vit-base-patch16-224", "v1.0")
    assert hub.parse_name("google/vit-base-patch16-224").folder_name == "google--vit-base-patch16-224"
    for not_a_name in ("model.npz", "dir/model.safetensors", "/abs/path", "a/b/c", "vit_base_patch16_224", "", None):
        assert hub.parse_name(not_a_name) is None, not_a_name


def test_hub_without_the_extra_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError) as err:
        weights.load_any("google/vit-base-patch16-224")
    message = str(err.value)
    assert "huggingface_hub is not installed" in message
    assert "https://huggingface.co/google/vit-base-patch16-224/resolve/main/model.safetensors" in message
    assert "https://huggingface.co/google/vit-base-patch16-224/resolve/main/config.json" in message
    assert str(tmp_path / "google--vit-base-patch16-224") in message


def test_hub_download_failure_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))

    def offline(name):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(hub, "_download", offline)
    monkeypatch.setattr(hub, "offline_reason", lambda: None)      # the network answers, the download fails
    with pytest.raises(CheckpointError, match=r"download failed \(OSError: Network is unreachable\).*"
                                              r"timm/vit_base_patch16_224\.augreg2_in21k_ft_in1k/resolve/main/"
                                              r"model\.safetensors.*timm--vit_base_patch16_224\.augreg2_in21k_ft_in1k"):
        weights.load_any("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")


def test_hub_download_through_huggingface_hub(tmp_path, monkeypatch):
    """_download's own logic against a stand-in for hf_hub_download serving a repository from a folder."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    errors = pytest.importorskip("huggingface_hub.errors")
    from safetensors.numpy import save_file
    repo = tmp_path / "repo"
    repo.mkdir()
    params = random_params(SMALL)
    save_file(params, str(repo / "model.safetensors"))
    (repo / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 5,
                                                  "model_args": {"embed_dim": 32, "depth": 2, "num_heads": 4,
                                                                 "patch_size": 8, "img_size": 32}}))
    snapshot, asked = tmp_path / "hf-cache" / "snapshots" / "0123abc", []

    def fake_hf_hub_download(repo_id, filename, revision=None, **kwargs):
        asked.append((repo_id, filename, revision))
        if not (repo / filename).exists():
            # the "not in the repository" error: RemoteEntryNotFoundError from huggingface_hub 1.0 on
            not_found = getattr(errors, "RemoteEntryNotFoundError", None) or huggingface_hub.utils.EntryNotFoundError
            missing = not_found.__new__(not_found)
            Exception.__init__(missing, f"404: {filename}")
            raise missing
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / filename).write_bytes((repo / filename).read_bytes())
        return str(snapshot / filename)

    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path / "ours"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(hub, "offline_reason", lambda: None)      # a network to download from
    config, loaded = weights.load_any("someone/tiny-vit@v2")
    assert asked == [("someone/tiny-vit", "config.json", "v2"), ("someone/tiny-vit", "model.safetensors", "v2"),
                     ("someone/tiny-vit", "preprocessor_config.json", "v2")]
    assert config.num_heads == 4 and config.name == "vit_base_patch16_224"
    assert all(np.array_equal(loaded[k], params[k]) for k in params)
    (repo / "model.safetensors").unlink()
    import shutil
    shutil.rmtree(snapshot)
    with pytest.raises(CheckpointError, match="the repository has none of model.safetensors, pytorch_model.bin"):
        weights.load_any("someone/tiny-vit")


@pytest.fixture
def downloads(monkeypatch):
    """hf_hub_download replaced: a download is an AssertionError; a look into its cache finds nothing."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    errors = pytest.importorskip("huggingface_hub.errors")
    asked = []

    def fake_hf_hub_download(repo_id, filename, revision=None, local_files_only=False, **kwargs):
        asked.append((filename, local_files_only))
        if not local_files_only:
            raise AssertionError(f"a download of {filename} was attempted")
        raise errors.LocalEntryNotFoundError(f"{filename} is not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    return asked


def offline_message(name, why):
    return (rf"no local file or folder '{name}', and it cannot be loaded as a hub name: {why}.*, and huggingface_hub's "
            rf"cache does not hold it\. Either connect to the network")


@pytest.mark.parametrize("failure", [socket.gaierror(-2, "Name or service not known"),
                                     ConnectionRefusedError(111, "Connection refused")])
def test_a_hub_name_without_network_fails_at_once(failure, tmp_path, monkeypatch, downloads):
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(address, timeout=None):
        raise failure

    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=offline_message("google/vit-base-patch16-224",
                                                              r"no network: huggingface\.co:443 cannot be reached")):
        weights.load_any("google/vit-base-patch16-224")
    assert time.perf_counter() - start < 3
    assert downloads and all(local for _, local in downloads)            # only huggingface_hub's cache was read


def test_a_hub_that_never_answers_is_given_up_on_in_seconds(tmp_path, monkeypatch, downloads):
    """A name lookup or connect that hangs (a firewall dropping packets) is abandoned after CONNECT_TIMEOUT_S."""
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    released = threading.Event()

    def hangs(address, timeout=None):  # until the test is over; then fails as a timed-out connect does
        released.wait(30)
        raise TimeoutError("released by the test")

    monkeypatch.setattr(hub.socket, "create_connection", hangs)
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=offline_message("google/vit-base-patch16-224",
                                                                  r"no network: .* \(no answer within 1\.5 s\)")):
            weights.load_any("google/vit-base-patch16-224")
        assert time.perf_counter() - start < 3
    finally:
        released.set()
    assert all(local for _, local in downloads)


def test_hf_hub_offline_is_honoured_without_touching_the_network(tmp_path, monkeypatch, downloads):
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: pytest.fail("the network was asked"))
    with pytest.raises(CheckpointError, match=offline_message("google/vit-base-patch16-224",
                                                              r"HF_HUB_OFFLINE is set \(unset it to download\)")):
        weights.load_any("google/vit-base-patch16-224")
    assert all(local for _, local in downloads)


def test_offline_reads_huggingface_hubs_own_cache(tmp_path, monkeypatch):
    """Offline, a repository huggingface_hub downloaded before still loads from its cache."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    snapshot = tmp_path / "hf-cache" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    from safetensors.numpy import save_file
    params = random_params(SMALL)
    save_file(params, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 5,
                                                      "model_args": {"embed_dim": 32, "depth": 2, "num_heads": 4,
                                                                     "patch_size": 8, "img_size": 32}}))

    def from_cache(repo_id, filename, revision=None, local_files_only=False, **kwargs):
        assert local_files_only
        if not (snapshot / filename).exists():
            raise FileNotFoundError(filename)
        return str(snapshot / filename)

    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path / "ours"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", from_cache)
    config, loaded = weights.load_any("someone/tiny-vit")
    assert config.num_heads == 4 and all(np.array_equal(loaded[k], params[k]) for k in params)


def test_a_real_hub_call_without_network_fails_within_3_s(tmp_path, monkeypatch):
    """Nothing replaced: on a machine without network (as this suite is run) the real lookup fails fast."""
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if hub.offline_reason() is None:
        pytest.skip("this machine reaches the hub")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="no network: "):
        weights.load_any("numpy-vit-tests/no-such-model")
    assert time.perf_counter() - start < 3


def test_hub_name_reads_files_put_by_hand(tmp_path, monkeypatch):
    """The offline route the error message describes: config.json + model.safetensors in our cache folder."""
    from safetensors.numpy import save_file
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # never reached: the files are there
    folder = tmp_path / "timm--vit_small_patch16_224.augreg_in21k_ft_in1k"
    folder.mkdir()
    config = ViTConfig.preset("vit_small_patch16_224", depth=1, img_size=32, num_classes=1000)
    params = random_params(config)
    save_file(params, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_small_patch16_224", "num_classes": 1000, "global_pool": "token",
        "model_args": {"depth": 1, "img_size": 32},
        "pretrained_cfg": {"tag": "augreg_in21k_ft_in1k", "input_size": [3, 32, 32], "interpolation": "bicubic",
                           "crop_pct": 0.9, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    loaded_config, loaded = weights.load_any("timm/vit_small_patch16_224.augreg_in21k_ft_in1k")
    assert loaded_config.num_heads == 6 and loaded_config.depth == 1 and loaded_config.crop_pct == 0.9
    assert loaded_config.labels[0] == "tench" and loaded_config.name == "vit_small_patch16_224.augreg_in21k_ft_in1k"
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


