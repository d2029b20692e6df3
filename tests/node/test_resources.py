"""Resource limits: device choice, GPU filter and memory fraction, RAM cap, batch fitting and AMP, decided from
injected machine facts; then the real CPU path on this machine, and the CUDA fitting where a GPU is present."""

import dataclasses
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from hearth.tasks import load_task
from node.cli import _build_config
from node.config import NodeConfig
from node.resources import (GB, CudaDevice, MachineFacts, ResourceError, Resources, TaskMemory, apply, decide,
                            fit_batch, measure_task_memory)  # fmt: skip
from node.settings import KEYS
from node.trainer import Trainer

URL = "http://127.0.0.1:8000"
MB = 2**20
# 1M parameters: 40 MB of model state in all (10 float32 copies), 1 MB of activations per sample.
MEMORY = TaskMemory(parameters=1_000_000, buffer_bytes=0, activation_bytes_per_sample=MB)
DEVICE_AT_1 = 12_000_000 + MB  # 3 copies on the device + one sample


@pytest.fixture(scope="module")
def spirals():
    return load_task("spirals")


def gpu(index: int, free_gb: float, total_gb: float = 16, name: str = "NVIDIA GeForce RTX 4080", bf16=True):
    return CudaDevice(index, name, int(total_gb * GB), int(free_gb * GB), bf16)


def machine(*gpus: CudaDevice, total_gb: float = 32, available_gb: float = 24, process_mb: int = 500):
    return MachineFacts(tuple(gpus), int(total_gb * GB), int(available_gb * GB), process_mb * MB)


def config(**values) -> NodeConfig:
    return NodeConfig(URL, threads=values.pop("threads", 2), **values)


def test_defaults_take_the_first_gpu_with_enough_free_memory(spirals):
    facts = machine(gpu(0, free_gb=0.01), gpu(1, free_gb=10, name="NVIDIA RTX A4000"))
    chosen = decide(config(), spirals, 256, facts, MEMORY)
    assert (chosen.device, chosen.device_name, chosen.batch_size, chosen.amp) == ("cuda:1", "NVIDIA RTX A4000", 256, True)
    assert chosen.gpu_memory_limit_bytes == 10 * GB  # the free memory, below 80 % of 16 GB
    assert chosen.gpu_memory_fraction == 0.8 and chosen.ram_limit_bytes == 16 * GB  # half of 32 GB
    assert chosen.ram_needed_bytes == 500 * MB + MEMORY.host_bytes()  # activations live on the GPU
    assert chosen.label == "cuda:1 NVIDIA RTX A4000"
    assert chosen.as_dict() == {
        "device": "cuda:1 NVIDIA RTX A4000", "threads": 2, "batch_size": 256, "swarm_batch_size": 256, "amp": "bf16",
        "ram_limit_gb": 16.0, "ram_needed_gb": round((500 * MB + 28_000_000) / GB, 2), "gpu_memory_limit_gb": 10.0,
    }  # fmt: skip
    fraction = decide(config(gpu_memory_fraction=0.25), spirals, 256, machine(gpu(0, free_gb=15)), MEMORY)
    assert fraction.gpu_memory_limit_bytes == 4 * GB and fraction.gpu_memory_fraction == 0.25


def test_the_cpu_when_cuda_is_absent_or_no_gpu_has_room(spirals, caplog):
    on_cpu = decide(config(), spirals, 256, machine(), MEMORY)
    assert (on_cpu.device, on_cpu.label, on_cpu.amp, on_cpu.gpu_memory_limit_bytes) == ("cpu", "cpu", False, None)
    assert on_cpu.ram_needed_bytes == 500 * MB + 40_000_000 + 256 * MB
    with caplog.at_level(logging.WARNING, logger="node.resources"):
        full = decide(config(), spirals, 256, machine(gpu(0, free_gb=0.005), gpu(1, free_gb=0.01)), MEMORY)
    assert full.device == "cpu"
    assert "allowed GPUs offer at most 0.01 GB" in caplog.text and "training on the CPU" in caplog.text


def test_device_cpu_on_a_gpu_machine_and_cuda_on_a_cpu_machine(spirals):
    assert decide(config(device="cpu"), spirals, 64, machine(gpu(0, free_gb=10)), MEMORY).device == "cpu"
    with pytest.raises(ResourceError, match="--device cuda was asked for, but CUDA is not available on this machine"):
        decide(config(device="cuda"), spirals, 64, machine(), MEMORY)
    with pytest.raises(ResourceError, match=r"spirals needs ~0\.01 GB of GPU memory, the allowed GPUs offer at most "
                                            r"0\.00 GB \(--gpus, --gpu-memory-fraction\)"):  # fmt: skip
        decide(config(device="cuda"), spirals, 64, machine(gpu(0, free_gb=0.001)), MEMORY)


def test_gpus_filter_order_and_unknown_indices(spirals):
    facts = machine(gpu(0, free_gb=10), gpu(1, free_gb=10, name="B"), gpu(2, free_gb=0.001, name="C"))
    assert decide(config(gpus=[1]), spirals, 64, facts, MEMORY).device == "cuda:1"
    assert decide(config(gpus=[2, 1, 0]), spirals, 64, facts, MEMORY).device == "cuda:1"  # 2 is full
    assert decide(config(gpus=[2], device="auto"), spirals, 64, facts, MEMORY).device == "cpu"
    with pytest.raises(ResourceError, match="--gpus names CUDA device 3, but this machine has 0, 1, 2"):
        decide(config(gpus=[0, 3]), spirals, 64, facts, MEMORY)
    assert decide(config(gpus=[3]), spirals, 64, machine(), MEMORY).device == "cpu"  # no CUDA here: auto → CPU


def test_ram_cap_too_small_names_the_numbers(spirals):
    with pytest.raises(ResourceError) as error:
        decide(config(max_ram_gb=0.25), spirals, 256, machine(process_mb=250), MEMORY)
    needed = (250 * MB + 40_000_000 + MB) / GB
    assert str(error.value) == f"spirals needs ~{needed:.2f} GB of RAM, this node may use 0.25 GB (--max-ram-gb)"
    with pytest.raises(ResourceError, match=r"may use 0\.26 GB \(only 0\.01 GB is free now\)"):
        decide(config(), spirals, 256, machine(available_gb=0.01, process_mb=256), MEMORY)
    with pytest.raises(ResourceError, match=r"may use 0\.20 GB \(half of this PC's RAM; see --max-ram-gb\)"):
        decide(config(), spirals, 256, machine(total_gb=0.4, process_mb=200), MEMORY)
    with pytest.raises(ResourceError, match=r"GB of RAM besides the GPU, this node may use 0\.20 GB"):
        decide(config(max_ram_gb=0.2), spirals, 256, machine(gpu(0, free_gb=10), process_mb=250), MEMORY)


def test_the_batch_is_halved_until_it_fits(spirals, caplog):
    base = 500 * MB + 40_000_000
    cap_gb = (base + 100 * MB) / GB  # room for 100 samples of activations
    with caplog.at_level(logging.WARNING, logger="node.resources"):
        chosen = decide(config(max_ram_gb=cap_gb), spirals, 256, machine(), MEMORY)
    assert chosen.batch_size == 64 and chosen.swarm_batch_size == 256
    assert chosen.ram_needed_bytes == base + 64 * MB <= chosen.ram_limit_bytes
    assert "Batch 256 does not fit in the RAM this node may use; using batch 64" in caplog.text
    assert "batch 64 (swarm 256)" in chosen.summary()
    assert decide(config(max_ram_gb=cap_gb, batch_size=100), spirals, 256, machine(), MEMORY).batch_size == 100
    assert decide(config(max_ram_gb=cap_gb, batch_size=300), spirals, 256, machine(), MEMORY).batch_size == 75
    assert decide(config(batch_size=8), spirals, 256, machine(), MEMORY).batch_size == 8  # smaller on purpose
    on_gpu = decide(config(gpu_memory_fraction=0.5), spirals, 256, machine(gpu(0, free_gb=10, total_gb=0.1)), MEMORY)
    assert on_gpu.batch_size == 32  # 0.05 GB: 12 MB of model state + 32 samples of 1 MB


def test_amp_decisions(spirals, caplog):
    bf16, older = gpu(0, free_gb=10), gpu(0, free_gb=10, name="Tesla T4", bf16=False)
    cases = [("auto", bf16, True), ("on", bf16, True), ("off", bf16, False), ("auto", older, False),
             ("on", older, False), ("auto", None, False), ("on", None, False)]  # fmt: skip
    for amp, device, expected in cases:
        facts = machine(device) if device else machine()
        assert decide(config(amp=amp), spirals, 64, facts, MEMORY).amp is expected, (amp, device)
    assert "Tesla T4, which lacks native bf16" in caplog.text and "training on the CPU in float32" in caplog.text


def test_settings_flags_and_validation(monkeypatch, tmp_path):
    monkeypatch.setenv("HEARTH_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("HEARTH_GPUS", "1, 0")
    built = _build_config(coordinator_url=URL, gpu_memory_fraction=0.5, max_ram_gb=4.0, batch_size=32, amp="off")
    assert (built.gpus, built.gpu_memory_fraction, built.max_ram_gb, built.batch_size, built.amp) == ([1, 0], 0.5, 4.0,
                                                                                                      32, "off")  # fmt: skip
    assert _build_config(coordinator_url=URL, gpus="2").gpus == [2]  # a flag overrides the environment
    assert KEYS["gpus"].parse([0, 1]) == [0, 1] and KEYS["gpus"].parse("none") is None
    assert NodeConfig.from_json_dict(config(gpus=[0, 2]).to_json_dict()).gpus == [0, 2]
    with pytest.raises(ValueError, match="gpus: expected a whole number, got 'x'"):
        KEYS["gpus"].parse("0,x")
    bad = [dict(gpus=[]), dict(gpus=[-1]), dict(gpus=[0, 0]), dict(gpu_memory_fraction=0), dict(gpu_memory_fraction=1.5),
           dict(max_ram_gb=0), dict(batch_size=0), dict(amp="fp16")]  # fmt: skip
    for values in bad:
        with pytest.raises(ValueError):
            config(**values)


def test_spirals_memory_is_measured_without_allocating(spirals):
    memory = measure_task_memory(spirals)
    assert memory.parameters == sum(parameter.numel() for parameter in spirals.build_model().parameters())
    assert memory.buffer_bytes == 2 * 128 * 4
    assert 10_000 < memory.activation_bytes_per_sample < 100_000  # ~27 KB: hidden layers of 512 floats, ×2
    state = memory.host_bytes() + memory.device_bytes(256)
    assert math.isclose(state, 10 * 4 * memory.parameters + 1024 + 256 * memory.activation_bytes_per_sample)


def test_fit_batch_halves_on_out_of_memory_and_restores_the_model(spirals):
    model = spirals.build_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    on_gpu = Resources("cuda:0", "test GPU", 1, 256, 256, True, GB, GB, GB, 0.8)
    tried = []
    fitted = fit_batch(spirals, model, on_gpu, attempt=lambda batch: tried.append(batch) or batch <= 40)
    assert tried == [256, 128, 64, 32] and fitted.batch_size == 32 and fitted.device == "cuda:0"
    with pytest.raises(ResourceError, match="does not fit in the GPU memory this node may use on cuda:0 test GPU"):
        fit_batch(spirals, model, on_gpu, attempt=lambda batch: False)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    on_cpu = Resources("cpu", "cpu", 1, 256, 256, False, GB, GB)
    assert fit_batch(spirals, model, on_cpu) is on_cpu


class StubOptimizer:
    """The parts of hivemind.Optimizer the trainer touches, over a plain torch optimizer."""

    def __init__(self, inner: torch.optim.Optimizer):
        self.inner, self.local_epoch, self.state_loads, self.steps = inner, 0, 0, []

    def step(self, batch_size=None):
        self.steps.append(batch_size)
        self.inner.step()

    def zero_grad(self):
        self.inner.zero_grad()


class StubSwarm:
    def __init__(self, batch_size: int):
        self.manifest = SimpleNamespace(hyperparameters=SimpleNamespace(batch_size=batch_size, learning_rate=2e-3),
                                        privacy=None)
        self.grad_averager = SimpleNamespace(rounds_started=0)
        self.rounds = self.grad_averager  # SwarmMember.rounds: the averager whose rounds close epochs

    def build_optimizer(self, params, make_optimizer, make_scheduler=None):
        self.optimizer = StubOptimizer(make_optimizer(list(params)))
        return self.optimizer


def test_this_machine_decides_builds_and_trains_one_step_on_the_cpu(spirals):
    facts = MachineFacts.probe(cuda=False)
    assert facts.total_ram_bytes >= facts.available_ram_bytes > 0 and facts.process_ram_bytes > 0
    chosen = decide(config(device="cpu", threads=1, batch_size=64), spirals, 256, facts)
    assert (chosen.device, chosen.batch_size, chosen.amp, chosen.threads) == ("cpu", 64, False, 1)
    threads = torch.get_num_threads()
    try:
        apply(chosen)
        assert torch.get_num_threads() == 1
        swarm = StubSwarm(batch_size=256)
        trainer = Trainer(spirals, swarm, chosen, "node-1", on_contribution=lambda contribution: None)
        assert trainer.batch_size == 64 and trainer.resources is chosen
        before = [parameter.detach().clone() for parameter in trainer.model.parameters()]
        data = spirals.data_stream(1, trainer.batch_size)
        trainer._train_one_batch(next(data))
    finally:
        torch.set_num_threads(threads)
    assert swarm.optimizer.steps == [64]  # hivemind counts this node's 64 samples, not the swarm's 256
    assert trainer.accountant.samples == 64 and math.isfinite(trainer.accountant._loss_sum)
    assert any(not torch.equal(old, new) for old, new in zip(before, trainer.model.parameters()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_decides_and_halves_a_batch_that_runs_out_of_memory(spirals):
    facts = MachineFacts.probe()
    chosen = decide(config(device="cuda", gpu_memory_fraction=0.05), spirals, 256, facts)
    assert chosen.device == "cuda:0" and chosen.amp == torch.cuda.is_bf16_supported(including_emulation=False)
    huge = dataclasses.replace(chosen, batch_size=2**22)  # ~110 GB of activations: over 5 % of any GPU
    apply(huge)
    try:
        model = spirals.build_model().to(huge.torch_device)
        fitted = fit_batch(spirals, model, huge)
        assert 1 <= fitted.batch_size < 2**22
        print(f"\n{huge.label}: batch {fitted.batch_size} fits in {huge.gpu_memory_limit_bytes / GB:.1f} GB")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
