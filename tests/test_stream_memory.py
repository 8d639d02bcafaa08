"""The stream registry's memory rules (byte budget, LRU drops, parking, ComfyUI's free / unload) and the models'
part in ComfyUI's model management, outside ComfyUI; comfy.model_management is faked only for the hooks."""

import gc
import logging
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from streamvace.models.memory import state_devices
from streamvace.nodes import host, model_cache, streams
from streamvace.nodes.streams import BUDGET_ENV, free_streams, parse_budget, registry

from test_wan_nodes import _load, models_dir  # noqa: F401  (the tiny model files, as a fixture)
from wan_tiny import TEXT_DIM


@dataclass
class Blob:
    data: torch.Tensor


def blob(nbytes: int, value: float = 1.0) -> Blob:
    return Blob(torch.full((nbytes,), value, dtype=torch.uint8))


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    free_streams()
    monkeypatch.setenv(BUDGET_ENV, "3000")
    yield
    free_streams()


def test_budget_drops_least_recently_used_streams_and_says_so(caplog):
    registry("wan").get_or_create("a", 1, lambda: blob(1000))
    registry("vae_decode").get_or_create("b", 1, lambda: blob(1000))
    registry("depth").get_or_create("c", 1, lambda: blob(1000))
    registry("wan").get("a")  # a is used again: b is now the least recently used
    with caplog.at_level(logging.WARNING):
        registry("sam2").get_or_create("d", 1, lambda: blob(1000))
    assert registry("vae_decode").get("b") is None and registry("wan").get("a") is not None
    assert registry("depth").get("c") is not None and registry("sam2").get("d") is not None
    assert "vae_decode:b" in caplog.text and "over the budget" in caplog.text and "wan:a" not in caplog.text
    assert streams.held_bytes() == 3000

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fresh = registry("vae_decode").get_or_create("b", 1, lambda: blob(10, 2.0))
    assert fresh.data.numel() == 10 and registry("vae_decode").was_dropped("b") is None
    assert "the vae_decode stream 'b' was dropped earlier" in caplog.text and "starts over" in caplog.text


def test_the_stream_being_used_is_never_dropped_for_the_budget():
    registry("wan").get_or_create("small", 1, lambda: blob(100))
    big = registry("wan").get_or_create("big", 1, lambda: blob(5000))  # alone over the budget
    assert registry("wan").get("big") is big and registry("wan").get("small") is None


def test_an_explicit_reset_starts_over_without_a_dropped_message(caplog):
    registry("wan").get_or_create("a", 1, lambda: blob(10))
    registry("wan").reset("a")
    with caplog.at_level(logging.WARNING):
        registry("wan").get_or_create("a", 1, lambda: blob(10))
    assert "dropped" not in caplog.text


def test_budget_sizes():
    assert parse_budget("8GB", 0) == 8 * 2 ** 30 and parse_budget("512 MiB", 0) == 512 * 2 ** 20
    assert parse_budget("40%", 1000) == 400 and parse_budget("1234", 0) == 1234
    with pytest.raises(ValueError, match="STREAMVACE_STREAM_BUDGET='lots'"):
        parse_budget("lots", 0)


def test_default_budget_is_a_share_of_the_device(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV)
    assert streams.budget_bytes() == int(host.total_memory() * 0.4) > 0


def test_memory_pressure_parks_least_recently_used_streams_until_there_is_enough(caplog):
    old = registry("wan").get_or_create("old", 1, lambda: blob(1000))
    registry("wan").get_or_create("new", 1, lambda: blob(1000))
    assert streams.park_streams("cpu", lambda: False) == []  # the CPU is the parking place itself

    calls = iter([False, True])
    with caplog.at_level(logging.INFO):
        names = streams._park(torch.device("cpu"), lambda: next(calls), to="meta")
    assert names == ["wan:old (0.00 GiB)"] and "wan:old" in caplog.text
    assert state_devices(old) == {torch.device("meta")}
    assert state_devices(registry("wan")._entries["new"].state) == {torch.device("cpu")}


def test_a_parked_stream_comes_back_to_its_device_when_used(monkeypatch):
    state = registry("wan").get_or_create("p", 1, lambda: blob(1000, 7.0))
    moves = []
    real_move = streams.move_state

    def move(state, device, **kwargs):  # a CPU-only machine has no second device: record, and copy on the CPU
        moves.append(torch.device(device))
        return real_move(state, "cpu", copy=True)

    monkeypatch.setattr(streams, "move_state", move)
    streams._park(torch.device("cuda", 0), lambda: False, to="cpu", resident=lambda state, device: 1000)
    assert registry("wan").get_or_create("p", 1, lambda: blob(1)) is state  # the same stream, not a new one
    assert moves == [torch.device("cpu"), torch.device("cuda", 0)] and torch.all(state.data == 7)


def test_unload_all_drops_every_stream_and_the_next_run_says_why(caplog):
    registry("wan").get_or_create("a", 1, lambda: blob(10))
    registry("depth").get_or_create("a", 1, lambda: blob(10))
    assert streams.drop_all_streams("ComfyUI unloaded all models") == ["wan:a", "depth:a"]
    with caplog.at_level(logging.WARNING):
        registry("wan").get_or_create("a", 1, lambda: blob(10))
    assert "ComfyUI unloaded all models" in caplog.text and "starts over" in caplog.text


class FakePatcher:
    """The two ModelPatcher members our code reaches: the wrapped module, and detach."""

    def __init__(self, model, load_device, offload_device):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        self.detached = 0

    def detach(self):
        self.detached += 1


@pytest.fixture()
def fake_comfy(monkeypatch):
    """comfy.model_management / comfy.model_patcher with the calls nodes/host.py makes, recording them."""
    mm = types.ModuleType("comfy.model_management")
    mm.loads, mm.freed, mm.unloaded, mm.free_bytes = [], [], [], 0
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.get_total_memory = lambda device: 10_000
    mm.get_free_memory = lambda device: mm.free_bytes
    mm.load_models_gpu = lambda patchers, force_full_load=False: mm.loads.append(list(patchers))
    mm.free_memory = lambda required, device, keep_loaded=(): mm.freed.append(required) or []
    mm.unload_all_models = lambda: mm.unloaded.append(True)
    mm.throw_exception_if_processing_interrupted = lambda: None
    mp = types.ModuleType("comfy.model_patcher")
    mp.ModelPatcher = FakePatcher
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.model_patcher = mm, mp
    for name, module in (("comfy", comfy), ("comfy.model_management", mm), ("comfy.model_patcher", mp)):
        monkeypatch.setitem(sys.modules, name, module)
    return mm


def test_comfyui_free_and_unload_reach_the_streams(fake_comfy):
    parked = []
    assert host.watch_memory(lambda device, enough: parked.append((device, enough())),
                             lambda: streams.drop_all_streams("ComfyUI unloaded all models"))
    registry("wan").get_or_create("a", 1, lambda: blob(10))
    fake_comfy.free_bytes = 100
    fake_comfy.free_memory(500, torch.device("cuda", 0))
    assert fake_comfy.freed == [500] and parked == [(torch.device("cuda", 0), False)]
    fake_comfy.unload_all_models()
    assert fake_comfy.unloaded == [True] and registry("wan").get("a") is None
    assert registry("wan").was_dropped("a") == "ComfyUI unloaded all models"


def test_models_are_handed_to_comfyui_and_loaded_for_each_run(fake_comfy):
    model_cache.clear()
    net = model_cache.cached(("test", 1), lambda: torch.nn.Sequential(torch.nn.Linear(2, 2)))
    patcher = net.streamvace_patcher
    assert isinstance(patcher.model, host.ManagedModules) and list(patcher.model.parts) == [net]
    assert net.streamvace_key == ("test", 1) and model_cache.cached(("test", 1), lambda: None) is net
    model_cache.use(net, None)
    assert fake_comfy.loads == [[patcher]]
    model_cache.clear()
    assert patcher.detached == 1
    del net, patcher
    gc.collect()
    assert model_cache.loaded() == []  # nothing held it: freed, not kept by the memo


def test_outside_comfyui_models_stay_where_they_were_loaded():
    model_cache.clear()
    net = model_cache.cached(("test", 2), lambda: torch.nn.Linear(2, 2))
    assert net.streamvace_patcher is None
    model_cache.use(net)  # nothing to do, nothing raised
    assert net.weight.device.type == "cpu"


def test_sampler_loads_its_models_through_comfyui_and_a_dropped_stream_starts_over(models_dir, fake_comfy,
                                                                                  monkeypatch, caplog):
    from streamvace.nodes import NODE_CLASS_MAPPINGS as NODES

    model_cache.clear()
    model, vae = _load(models_dir)
    args = dict(model=model, positive=[[torch.randn(1, 7, TEXT_DIM), {}]], reset=False, width=48, height=32,
                chunks=1, seed=0, cache_policy="longlive", steps="1000", warp_steps=True, vae=vae)

    def run(stream_id):
        return NODES["StreamVACESampler"]().sample(**args, stream_id=stream_id)[0]["stream_frame"]

    assert [run("s"), run("s")] == [0, 3]
    assert fake_comfy.loads[-1] == [model.streamvace_patcher, vae.streamvace_patcher]
    monkeypatch.setenv(BUDGET_ENV, str(registry("wan").nbytes("s")))
    with caplog.at_level(logging.WARNING):
        assert run("t") == 0  # a second stream does not fit beside the first: the least recently used goes
        assert "wan:s" in caplog.text
        assert run("s") == 0 and "the wan stream 's' was dropped earlier" in caplog.text
