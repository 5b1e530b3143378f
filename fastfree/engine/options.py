"""What the fast engine may use, resolved once per run from the device and the flags."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastfree.errors import FastFreeError


@dataclass(frozen=True)
class EngineOptions:
    """Switches of the fast engine. `for_device` picks the defaults; every field can be overridden.

    vectorize: vmap over replay's tasks and, unless five_vmap says otherwise, FIVE's teachers (one
        grouped kernel per layer). On a GPU this saves
        launches; on a CPU oneDNN runs grouped convolutions 2-3x slower than a loop of plain
        ones (measured, README), so there the engine loops over teachers with the same pure
        functions instead. Whether the loop also wins on a GPU is unmeasured: vmap's grouped
        convolutions keep inductor off channels-last and cost cuDNN transposes there
        (profiling/bench_five.py's fast_loop_* variants measure it).
    five_vmap: FIVE's teachers with vmap (True) or a loop (False); None resolves to `vectorize`
        on construction (`--teacher-map vmap|loop`). Replay keeps `vectorize`: its graphed vmapped meta-batch is
        the design the notes' prototype measured.
    fuse_upsample: FIVE's generator runs each nearest x2 upsampling + 3x3 convolution as one
        stride-2 transposed convolution (fastfree.engine.upsample_conv: equal up to rounding, 4/9
        of the multiply-adds, no upsampled activation). Off only to measure what it buys.
    compile: torch.compile the inner-loop functions (boundary outside vmap/grad); with the
        loop, one teacher's gradient and the Adam step, not the loop itself.
    cuda_graphs: capture FIVE's fixed k-step loop of all b teachers in one CUDA graph.
    amp: bf16 autocast for convolutions and matmuls; losses and optimiser state in fp32.
    kernels: the fused Triton losses (fastfree.kernels) instead of the torch ones.
    compile_backend: torch.compile's backend ("inductor"; "aot_eager" traces without code
        generation, which tests use to check graph breaks quickly).
    """

    vectorize: bool = False
    five_vmap: bool | None = None
    fuse_upsample: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    amp: bool = False
    kernels: bool = False
    compile_backend: str = "inductor"

    @staticmethod
    def for_device(device: torch.device, *, compile: bool = False, amp: bool = False,
                   cuda_graphs: bool | None = None, kernels: bool | None = None,
                   vectorize: bool | None = None, five_vmap: bool | None = None,
                   fuse_upsample: bool = True) -> "EngineOptions":
        cuda = device.type == "cuda"
        if cuda_graphs and not cuda:
            raise FastFreeError("--cuda-graphs needs a CUDA device: drop the flag or use --device cuda")
        if kernels:  # imported only when asked for: fastfree.kernels imports Triton
            from fastfree.kernels._dispatch import triton_runs_on

            if not triton_runs_on(device):  # the op would take its torch path, recorded as kernels
                raise FastFreeError("--kernels runs the fused Triton losses on CUDA (on a CPU only under "
                                    f"TRITON_INTERPRET=1, for tests); on {device.type} the torch losses run either "
                                    "way: drop the flag or use --device cuda")
        return EngineOptions(
            vectorize=cuda if vectorize is None else vectorize,
            five_vmap=five_vmap,
            fuse_upsample=fuse_upsample,
            compile=compile,
            cuda_graphs=cuda if cuda_graphs is None else cuda_graphs,
            amp=amp,
            kernels=cuda if kernels is None else kernels,
        )

    @staticmethod
    def from_flags(args, device: torch.device) -> "EngineOptions":
        """From the CLI's engine flags (cli._engine_flags: --compile, --amp, --cuda-graphs, --kernels,
        --teacher-map), with the device's defaults for those not given."""
        five_vmap = None if args.teacher_map is None else args.teacher_map == "vmap"
        return EngineOptions.for_device(device, compile=args.compile, amp=args.amp, cuda_graphs=args.cuda_graphs,
                                        kernels=args.kernels, five_vmap=five_vmap)

    def __post_init__(self):
        if self.five_vmap is None:  # resolved once, so equal options compare (and are recorded) equal
            object.__setattr__(self, "five_vmap", self.vectorize)

    def autocast(self, device: torch.device):
        """bf16 autocast when amp is on (cache off: required inside CUDA graphs), else a no-op."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False)
