"""The node's compute resources, decided once before the model is built, then applied: the device (the CPU or
ONE CUDA GPU), CPU threads, how much RAM and GPU memory the node may use, the local batch size that fits, and
bf16 autocast.

- MachineFacts: what this machine offers (CUDA devices, RAM). `probe()` reads it; tests inject their own.
- TaskMemory / measure_task_memory(): what a task needs, measured on the meta device (nothing is allocated).
- decide(): the Resources for a config, a task and the swarm's batch size; ResourceError says why not.
- apply(): CPU threads, the CUDA device and its memory fraction.
- fit_batch(): on CUDA, tries forward + backward at the chosen batch and halves it on out-of-memory.

"GB" in messages means GiB (2^30 bytes), as task managers show it.
"""

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import psutil
import torch

from hearth.tasks import Task
from node.config import NodeConfig

logger = logging.getLogger(__name__)
GB = 2**30
FLOAT32 = 4  # bytes; hivemind keeps its copies in float32 whatever the model's dtype
# Copies of the parameters a node holds with hivemind.Optimizer as node/swarm.py builds it (it gets `params`,
# so offload_optimizer defaults to True, and reuse_grad_buffers is False):
# - on the training device: the model's parameters, their .grad, and GradientAverager's local gradient
#   accumulators: 3 copies;
# - in host RAM (shared memory): GradientAverager's averaged gradients, TrainingStateAverager's offloaded
#   parameters (the optimizer steps on these) and Adam's exp_avg and exp_avg_sq: 4 copies;
# - transient, in host RAM: one more copy of that state (parameters + 2 moments) while it is downloaded from
#   peers (load_state_from_peers) or kept while paused (SwarmMember.leave): 3 copies.
DEVICE_COPIES = 3
HOST_COPIES = 4 + 3
# Activations: autograd's saved tensors per sample, and as much again for their gradients during backward.
ACTIVATION_FACTOR = 2


class ResourceError(RuntimeError):
    """The node cannot train here as configured; the message is one sentence for the volunteer."""


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    bf16: bool  # native bf16 (compute capability 8.0+), not emulated


@dataclass(frozen=True)
class MachineFacts:
    """What this machine offers. `cuda` lists every device CUDA sees (empty without CUDA)."""

    cuda: tuple[CudaDevice, ...]
    total_ram_bytes: int
    available_ram_bytes: int
    process_ram_bytes: int = 0  # what this process already uses (torch and friends imported)

    @classmethod
    def probe(cls, gpus: Optional[list[int]] = None, cuda: bool = True) -> "MachineFacts":
        """Read the machine. Free GPU memory is read (opening a CUDA context) only on the devices in `gpus`;
        `cuda=False` leaves CUDA untouched (--device cpu)."""
        memory = psutil.virtual_memory()
        devices = []
        if cuda and torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                properties = torch.cuda.get_device_properties(index)
                free = torch.cuda.mem_get_info(index)[0] if gpus is None or index in gpus else 0
                # torch.cuda.is_bf16_supported(including_emulation=False)'s test, per device and without
                # making each device current (which would open a CUDA context on it)
                bf16 = bool(torch.version.hip) or properties.major >= 8
                devices.append(CudaDevice(index, properties.name, properties.total_memory, free, bf16))
        rss = psutil.Process(os.getpid()).memory_info().rss
        return cls(tuple(devices), memory.total, memory.available, rss)


@dataclass(frozen=True)
class TaskMemory:
    """A task's memory needs, in bytes: from its parameter count, buffers and activations per sample."""

    parameters: int
    buffer_bytes: int
    activation_bytes_per_sample: int

    def device_bytes(self, batch_size: int) -> int:
        """On the training device: parameters, gradients, gradient accumulators, buffers, activations."""
        return DEVICE_COPIES * FLOAT32 * self.parameters + self.buffer_bytes + self.activation_bytes_per_sample * batch_size

    def host_bytes(self) -> int:
        """In host RAM besides the model: hivemind's copies and the transient state download."""
        return HOST_COPIES * FLOAT32 * self.parameters


def measure_task_memory(task: Task) -> TaskMemory:
    """Parameters from the model built on the meta device; activations per sample from the bytes autograd saves
    for backward at batch 2 and 4 (the difference leaves out saved weights). Falls back to the CPU for a model
    that cannot run on the meta device."""
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = task.build_model()
            saved = [_saved_bytes(task, model, batch_size, device) for batch_size in (2, 4)]
            break
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
            if device == "cpu":
                raise
            logger.debug("Measuring %s on the meta device failed (%s); measuring on the CPU", task.name, e)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    buffers = sum(buffer.numel() * buffer.element_size() for buffer in model.buffers())
    per_sample = max(0, saved[1] - saved[0]) // 2
    return TaskMemory(parameters, buffers, ACTIVATION_FACTOR * per_sample)


def _saved_bytes(task: Task, model: torch.nn.Module, batch_size: int, device: str) -> int:
    batch = tuple(tensor.to(device) for tensor in next(task.data_stream(0, batch_size)))
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        task.loss(model, batch)
    return total


@dataclass(frozen=True)
class Resources:
    """The decision: where and how this node trains. `as_dict()` is what `hearth node status` can show."""

    device: str  # "cpu" or "cuda:N"
    device_name: str  # "cpu" or the GPU's name
    threads: int
    batch_size: int  # samples per step on this node
    swarm_batch_size: int  # the swarm's batch size, which batch_size may be below
    amp: bool  # bf16 autocast
    ram_limit_bytes: int
    ram_needed_bytes: int  # estimate at batch_size
    gpu_memory_limit_bytes: Optional[int] = None
    gpu_memory_fraction: Optional[float] = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def label(self) -> str:
        return self.device if self.device == "cpu" else f"{self.device} {self.device_name}"

    def as_dict(self) -> dict:
        gpu = self.gpu_memory_limit_bytes
        return {
            "device": self.label, "threads": self.threads, "batch_size": self.batch_size,
            "swarm_batch_size": self.swarm_batch_size, "amp": "bf16" if self.amp else "off",
            "ram_limit_gb": round(self.ram_limit_bytes / GB, 2), "ram_needed_gb": round(self.ram_needed_bytes / GB, 2),
            "gpu_memory_limit_gb": None if gpu is None else round(gpu / GB, 2),
        }  # fmt: skip

    def summary(self) -> str:
        batch = f"batch {self.batch_size}" + (f" (swarm {self.swarm_batch_size})" if self.batch_size != self.swarm_batch_size else "")
        return (f"{self.label}, {self.threads} thread(s), {batch}, {'bf16 autocast' if self.amp else 'float32'}, "
                f"RAM ~{_gb(self.ram_needed_bytes)} of {_gb(self.ram_limit_bytes)} GB")  # fmt: skip


def _gb(size: int) -> str:
    return f"{size / GB:.2f}"


def decide(config: NodeConfig, task: Task, swarm_batch_size: int, facts: MachineFacts,
           memory: Optional[TaskMemory] = None) -> Resources:  # fmt: skip
    """Resources for this config and task on this machine; ResourceError (one sentence) when it cannot train."""
    memory = memory or measure_task_memory(task)
    wanted = config.batch_size or swarm_batch_size
    ram_limit, why = _ram_limit(config, facts)
    gpu = _pick_gpu(config, task, memory, facts)
    if gpu is None:  # everything in RAM; activations grow with the batch
        needed = lambda batch: facts.process_ram_bytes + memory.host_bytes() + memory.device_bytes(batch)  # noqa: E731
        batch = _largest_fitting(wanted, lambda batch: needed(batch) <= ram_limit)
        gpu_limit, where = None, "the RAM this node may use"
    else:  # hivemind's copies in RAM, the model and activations on the GPU
        needed = lambda batch: facts.process_ram_bytes + memory.host_bytes()  # noqa: E731
        gpu_limit, where = _gpu_limit(gpu, config), f"GPU {gpu.index}'s memory"
        fits = lambda batch: needed(batch) <= ram_limit and memory.device_bytes(batch) <= gpu_limit  # noqa: E731
        batch = _largest_fitting(wanted, fits)  # the GPU holds batch 1 (_pick_gpu): None means too little RAM
    if batch is None:
        besides = "" if gpu is None else " besides the GPU"
        raise ResourceError(f"{task.name} needs ~{_gb(needed(1))} GB of RAM{besides}, this node may use "
                            f"{_gb(ram_limit)} GB ({why})")  # fmt: skip
    if batch != wanted:
        logger.warning("Batch %d does not fit in %s; using batch %d", wanted, where, batch)
    return Resources(
        device="cpu" if gpu is None else f"cuda:{gpu.index}", device_name="cpu" if gpu is None else gpu.name,
        threads=config.threads, batch_size=batch, swarm_batch_size=swarm_batch_size, amp=_use_amp(config.amp, gpu),
        ram_limit_bytes=ram_limit, ram_needed_bytes=needed(batch), gpu_memory_limit_bytes=gpu_limit,
        gpu_memory_fraction=None if gpu is None else config.gpu_memory_fraction,
    )  # fmt: skip


def _ram_limit(config: NodeConfig, facts: MachineFacts) -> tuple[int, str]:
    """The RAM this node may use (its own current use included) and why it is that much."""
    cap = int(config.max_ram_gb * GB) if config.max_ram_gb is not None else facts.total_ram_bytes // 2
    free = facts.process_ram_bytes + facts.available_ram_bytes
    if free < cap:
        return free, f"only {_gb(facts.available_ram_bytes)} GB is free now"
    return cap, "--max-ram-gb" if config.max_ram_gb is not None else "half of this PC's RAM; see --max-ram-gb"


def check_device_request(config: NodeConfig, facts: MachineFacts) -> None:
    """Fail early (before contacting anyone) on `--device cuda` without CUDA or `--gpus` naming absent devices."""
    if config.device == "cuda" and not facts.cuda:
        raise ResourceError("--device cuda was asked for, but CUDA is not available on this machine "
                            "(no NVIDIA driver or GPU, or a CPU-only build of torch)")  # fmt: skip
    if config.device != "cpu" and facts.cuda and config.gpus is not None:
        missing = sorted(set(config.gpus) - {device.index for device in facts.cuda})
        if missing:
            present = ", ".join(str(device.index) for device in facts.cuda)
            raise ResourceError(f"--gpus names CUDA device {', '.join(map(str, missing))}, but this machine has "
                                f"{present}")  # fmt: skip


def _pick_gpu(config: NodeConfig, task: Task, memory: TaskMemory, facts: MachineFacts) -> Optional[CudaDevice]:
    """The first allowed GPU with room for the task at batch 1; None for the CPU."""
    check_device_request(config, facts)
    if config.device == "cpu" or not facts.cuda:
        if config.device == "auto" and config.gpus is not None:
            logger.info("CUDA is not available: training on the CPU")
        return None
    by_index = {device.index: device for device in facts.cuda}
    allowed = [by_index[index] for index in config.gpus] if config.gpus is not None else list(facts.cuda)
    needed = memory.device_bytes(1)
    for device in allowed:
        if needed <= _gpu_limit(device, config):
            return device
    best = max(_gpu_limit(device, config) for device in allowed)
    message = (f"{task.name} needs ~{_gb(needed)} GB of GPU memory, the allowed GPUs offer at most {_gb(best)} GB "
               f"(--gpus, --gpu-memory-fraction)")  # fmt: skip
    if config.device == "cuda":
        raise ResourceError(message)
    logger.warning("%s; training on the CPU", message)
    return None


def _gpu_limit(device: CudaDevice, config: NodeConfig) -> int:
    return min(device.free_bytes, int(device.total_bytes * config.gpu_memory_fraction))


def _largest_fitting(wanted: int, fits: Callable[[int], bool]) -> Optional[int]:
    """`wanted`, halved until it fits: 256, 128, …, 1; None when not even 1 fits."""
    batch = wanted
    while not fits(batch):
        if batch == 1:
            return None
        batch //= 2
    return batch


def _use_amp(choice: str, gpu: Optional[CudaDevice]) -> bool:
    """bf16 autocast only: fp16 would need a GradScaler, which hivemind's Optimizer would have to own."""
    if choice == "off":
        return False
    if gpu is None or not gpu.bf16:
        if choice == "on":
            where = "the CPU" if gpu is None else f"{gpu.name}, which lacks native bf16"
            logger.warning("--amp on: bf16 autocast is for CUDA GPUs with bf16; training on %s in float32", where)
        return False
    return True


def apply(resources: Resources) -> None:
    """Set torch's CPU threads, the current CUDA device and its memory fraction. Call before building the model."""
    torch.set_num_threads(resources.threads)
    if resources.torch_device.type == "cuda":
        index = resources.torch_device.index
        torch.cuda.set_device(index)
        torch.cuda.set_per_process_memory_fraction(resources.gpu_memory_fraction, index)
    logger.info("Resources: %s", resources.summary())


def fit_batch(task: Task, model: torch.nn.Module, resources: Resources,
              attempt: Optional[Callable[[int], bool]] = None) -> Resources:  # fmt: skip
    """On CUDA, run forward + backward at the chosen batch, halving it on out-of-memory; `attempt(batch)` (default:
    _fits_on_gpu) says whether a batch ran. The model's gradients and buffers are left as they were. CPU: as is."""
    if resources.torch_device.type != "cuda":
        return resources
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}  # e.g. batch-norm stats
    attempt = attempt or (lambda batch: _fits_on_gpu(task, model, batch, resources))
    try:
        batch = _largest_fitting(resources.batch_size, attempt)
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    if batch is None:
        raise ResourceError(f"{task.name} does not fit in the GPU memory this node may use on {resources.label} even "
                            f"at batch 1 (see --gpu-memory-fraction, or use --device cpu)")  # fmt: skip
    if batch != resources.batch_size:
        logger.warning("Batch %d ran out of memory on %s; using batch %d", resources.batch_size, resources.label, batch)
    return dataclasses.replace(resources, batch_size=batch)


def _fits_on_gpu(task: Task, model: torch.nn.Module, batch_size: int, resources: Resources) -> bool:
    try:
        _forward_backward(task, model, batch_size, resources)
        fits = True
    except torch.cuda.OutOfMemoryError:
        fits = False  # the attempt's tensors went with its frame, freed with the exception
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    return fits


def _forward_backward(task: Task, model: torch.nn.Module, batch_size: int, resources: Resources) -> None:
    """One training pass at `batch_size`, with room held back for hivemind's gradient accumulators (one more copy
    of the parameters on the device, allocated only after this check)."""
    device = resources.torch_device
    reserve = torch.empty(sum(p.numel() for p in model.parameters()) * FLOAT32, dtype=torch.uint8, device=device)
    inputs, targets = (tensor.to(device) for tensor in next(task.data_stream(0, batch_size)))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=resources.amp):
        loss = task.loss(model, (inputs, targets))
    loss.backward()
    torch.cuda.synchronize(device)
    del reserve
