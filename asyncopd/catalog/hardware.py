"""Accelerator presets for the simulator's analytic (roofline) cost models.

A :class:`Hardware` is a handful of per-device figures: peak dense bf16 FLOP/s, memory
bandwidth and capacity, interconnect bandwidth inside and across nodes, and two
"achievable fraction" factors that a roofline model multiplies in. The presets below are
public datasheet figures (sources cited next to each); they seed the cost models and are
meant to be replaced by calibration (``asyncopd calibrate``) wherever measurements exist.

Conventions
-----------
* Every figure is **per device** (one GPU; for the ``cpu`` preset, one core).
* Bytes are decimal (1 GB = 1e9 B), as on datasheets. ``mem_bytes`` is the datasheet
  capacity, not what an engine can allocate after its own reservations.
* Interconnect bandwidths are **per direction**: datasheets quote NVLink as the
  bidirectional aggregate (H100: 900 GB/s = 450 GB/s each way); a one-way transfer of
  ``n`` bytes takes at least ``n / intra_node_bw``. InfiniBand is quoted per direction
  already (400 Gb/s NDR = 50e9 B/s).
* ``peak_flops`` is dense (no 2:4 sparsity) bf16 tensor-core throughput.

Pure Python on purpose: ``import sim`` must not pull in torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from asyncopd.catalog.record import CatalogRecord


@dataclass(frozen=True)
class Hardware(CatalogRecord):
    """Per-device performance figures of one accelerator kind (see module docstring)."""

    name: str
    peak_flops: float  # dense bf16 FLOP/s
    mem_bw: float  # bytes/s (HBM, or DRAM for the cpu preset)
    mem_bytes: float  # device memory, bytes
    intra_node_bw: float  # bytes/s per device per direction (NVLink or equivalent)
    inter_node_bw: float  # bytes/s per device per direction (e.g. 400 Gb/s IB -> 50e9)
    devices_per_node: int = 8
    flops_eff: float = 0.55  # achievable fraction of peak_flops in large matmuls
    bw_eff: float = 0.8  # achievable fraction of mem_bw in streaming reads

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("Hardware.name must be a non-empty string")
        for f in ("peak_flops", "mem_bw", "mem_bytes", "intra_node_bw", "inter_node_bw"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"Hardware {self.name!r}: {f} must be a positive number, got {v!r}")
        if not isinstance(self.devices_per_node, int) or isinstance(self.devices_per_node, bool) \
                or self.devices_per_node < 1:
            raise ValueError(f"Hardware {self.name!r}: devices_per_node must be an integer >= 1, "
                             f"got {self.devices_per_node!r}")
        for f in ("flops_eff", "bw_eff"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
                raise ValueError(f"Hardware {self.name!r}: {f} must be in (0, 1], got {v!r}")

    # ------------------------------------------------------------------ derived
    @property
    def eff_flops(self) -> float:
        """Achievable FLOP/s: ``peak_flops * flops_eff``."""
        return self.peak_flops * self.flops_eff

    @property
    def eff_mem_bw(self) -> float:
        """Achievable memory bandwidth: ``mem_bw * bw_eff``."""
        return self.mem_bw * self.bw_eff

    @property
    def ridge_intensity(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel is compute-bound."""
        return self.eff_flops / self.eff_mem_bw

    def link_bw(self, num_devices: int) -> float:
        """Per-device bandwidth of the slowest link a group of ``num_devices`` devices uses:
        NVLink if the group fits in one node, the inter-node network otherwise."""
        if num_devices < 1:
            raise ValueError(f"num_devices must be >= 1, got {num_devices}")
        return self.intra_node_bw if num_devices <= self.devices_per_node else self.inter_node_bw


# ---------------------------------------------------------------------- presets
HARDWARE: dict[str, Hardware] = {
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB): BF16 tensor 312 TFLOP/s dense
    # (624 with sparsity), HBM2e 2,039 GB/s, 80 GB, NVLink 600 GB/s (bidirectional).
    # DGX A100: one 200 Gb/s HDR InfiniBand adapter per GPU.
    "a100-80gb": Hardware(
        name="a100-80gb", peak_flops=312e12, mem_bw=2.039e12, mem_bytes=80e9,
        intra_node_bw=300e9, inter_node_bw=25e9, devices_per_node=8,
        flops_eff=0.55, bw_eff=0.8),
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 tensor 989 TFLOP/s dense
    # (1,979 with sparsity), HBM3 3.35 TB/s, 80 GB, NVLink 900 GB/s (bidirectional).
    # DGX H100: one 400 Gb/s NDR InfiniBand (ConnectX-7) port per GPU.
    "h100-sxm": Hardware(
        name="h100-sxm", peak_flops=989e12, mem_bw=3.35e12, mem_bytes=80e9,
        intra_node_bw=450e9, inter_node_bw=50e9, devices_per_node=8,
        flops_eff=0.55, bw_eff=0.8),
    # NVIDIA H200 Tensor Core GPU datasheet (SXM): same compute as H100 SXM,
    # HBM3e 4.8 TB/s, 141 GB, NVLink 900 GB/s (bidirectional); 400 Gb/s NDR per GPU.
    "h200": Hardware(
        name="h200", peak_flops=989e12, mem_bw=4.8e12, mem_bytes=141e9,
        intra_node_bw=450e9, inter_node_bw=50e9, devices_per_node=8,
        flops_eff=0.55, bw_eff=0.8),
    # NVIDIA HGX B200 / DGX B200 datasheets: 8 GPUs give 36 PFLOP/s FP16/BF16 *with
    # sparsity* -> 4.5 per GPU sparse -> ~2.25 PFLOP/s dense; 1.44 TB HBM3e total
    # (~180 GB per GPU; the standalone B200 is often quoted at 192 GB); 64 TB/s total
    # (8 TB/s per GPU); NVLink 5 at 1.8 TB/s per GPU (bidirectional); DGX B200 has
    # 400 Gb/s networking per GPU. Kernels are less mature: lower default flops_eff.
    "b200": Hardware(
        name="b200", peak_flops=2.25e15, mem_bw=8e12, mem_bytes=180e9,
        intra_node_bw=900e9, inter_node_bw=50e9, devices_per_node=8,
        flops_eff=0.5, bw_eff=0.8),
    # A generic 2-core x86 box (CI machines, laptops in a VM). Order-of-magnitude
    # figures only, per core: ~5e10 FLOP/s fp32 (AVX2 FMA: 2 units x 8 lanes x 2 FLOP
    # x ~3 GHz ~ 1e11 peak, about half achievable in practice), DRAM ~2e10 B/s shared
    # by 2 cores, 8 GB shared by 2 cores, core-to-core copies through shared memory,
    # 10 GbE between boxes. Calibration (``asyncopd calibrate``) replaces these.
    "cpu": Hardware(
        name="cpu", peak_flops=5e10, mem_bw=1e10, mem_bytes=4e9,
        intra_node_bw=5e9, inter_node_bw=1.25e9, devices_per_node=2,
        flops_eff=0.5, bw_eff=0.7),
}

# Aliases (after normalisation: lower case, '_' and ' ' -> '-').
_HARDWARE_ALIASES: dict[str, str] = {
    "a100": "a100-80gb", "a100-80g": "a100-80gb", "a100-sxm": "a100-80gb",
    "a100-sxm4": "a100-80gb", "a100-sxm4-80gb": "a100-80gb",
    "h100": "h100-sxm", "h100-sxm5": "h100-sxm", "h100-80gb": "h100-sxm",
    "h100-sxm-80gb": "h100-sxm",
    "h200-sxm": "h200", "h200-141gb": "h200",
    "b200-sxm": "b200", "b200-180gb": "b200",
    "x86": "cpu", "generic-cpu": "cpu", "cpu-2core": "cpu",
}


class UnknownHardwareError(KeyError, ValueError):
    """An unknown hardware name (a ``KeyError`` and a ``ValueError``; prints its message plainly)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def get_hardware(name: Union[str, Hardware]) -> Hardware:
    """The preset called ``name`` (case-insensitive; aliases such as ``"h100"`` accepted).

    A :class:`Hardware` instance is returned unchanged.
    """
    if isinstance(name, Hardware):
        return name
    if not isinstance(name, str):
        raise TypeError(f"get_hardware: expected a name, got {type(name).__name__}")
    key = _norm(name)
    key = _HARDWARE_ALIASES.get(key, key)
    try:
        return HARDWARE[key]
    except KeyError:
        raise UnknownHardwareError(f"unknown hardware {name!r}; valid names: {', '.join(sorted(HARDWARE))} "
                       f"(aliases: {', '.join(sorted(_HARDWARE_ALIASES))})") from None


__all__ = ["Hardware", "HARDWARE", "UnknownHardwareError", "get_hardware"]
