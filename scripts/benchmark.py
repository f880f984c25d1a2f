#!/usr/bin/env python
"""Training and inference images per second of the U-Net for each precision, memory format and
compile setting, with FLOPs per image, achieved TFLOP/s and peak memory, as a Markdown table.

Examples (from the repository root):

    python scripts/benchmark.py --base-channels 64 --img-size 256 --batch-size 4 --seconds 60
    python scripts/benchmark.py --device cuda --batch-size 32 --compile --json results/speed.json

Rows: fp32 and bf16 (and fp16 on a GPU), each with channels_last off and on; the row train.py
uses by default (--precision auto, channels_last) is marked "train.py default". --compile adds
each of them compiled (compiling takes minutes on a CPU); on CUDA, bf16 (fp16 before Ampere) +
channels_last + compile is always measured, as the setting to use for long GPU runs.

A training step is train.py's (training/step.py): forward under autocast, the BCE + Dice loss,
backward (with a GradScaler for fp16), gradient clipping and an AdamW step, with train.py's
default hyper-parameters, on the U-Net train.py builds by default (deep supervision included;
its heads are 1x1 convolutions, well under 1 % of the FLOPs). Inference is a forward pass under
torch.inference_mode. Inputs are random tensors already on the device, so the numbers are the
model's alone (see scripts/benchmark_loader.py for the data loader). Warm-up steps, which also
compile, are not timed; each row is then timed for --seconds, and for at least --min-steps
steps.

FLOPs per image are counted by torch.utils.flop_counter.FlopCounterMode (convolutions and
matrix products; a training step counts forward and backward, not the optimiser). Peak memory
is torch.cuda.max_memory_allocated on CUDA; elsewhere it is the process's peak resident set
size so far (resource.getrusage ru_maxrss), which never decreases: a row shows the largest of
its own peak and those of the rows before it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.device import Hardware, autocast_dtype, configure_backends, select_device  # noqa: E402
from common.errors import run_script  # noqa: E402
from common.options import check_minimum  # noqa: E402
from models import UNetConfig, build_model, count_parameters  # noqa: E402
from models.unet_parts import NORMS  # noqa: E402
from training.options import defaults  # noqa: E402
from training.step import Optimisation  # noqa: E402
from utils import SegmentationLoss  # noqa: E402

TRAIN_DEFAULTS = defaults()
COLUMNS = ("setting", "train img/s", "inference img/s", "train speed-up", "inference speed-up",
           "train TFLOP/s", "inference TFLOP/s", "train peak MiB", "inference peak MiB")


@dataclass(frozen=True)
class Setting:
    """One row of the table: train.py's --precision, memory format and --compile."""

    precision: str
    channels_last: bool
    compile: bool = False

    def is_train_default(self, device: torch.device) -> bool:
        """Whether train.py runs exactly this when given no hardware flags."""
        return (autocast_dtype(self.precision, device)
                == autocast_dtype(TRAIN_DEFAULTS.precision, device)
                and self.channels_last == TRAIN_DEFAULTS.channels_last
                and self.compile == (TRAIN_DEFAULTS.compile == "on"))

    def name(self, device: torch.device) -> str:
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.compile:
            parts.append("compile")
        name = " + ".join(parts)
        return f"{name} (train.py default)" if self.is_train_default(device) else name


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; model and batch defaults are train.py's."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1")
    p.add_argument("--base-channels", type=int, default=TRAIN_DEFAULTS.base_channels,
                   help="width of the first U-Net level (64: the paper's 31 M parameters)")
    p.add_argument("--depth", type=int, default=TRAIN_DEFAULTS.depth,
                   help="number of down-sampling steps")
    p.add_argument("--norm", default=TRAIN_DEFAULTS.norm, choices=NORMS,
                   help="GroupNorm or BatchNorm layers")
    p.add_argument("--img-size", type=int, default=TRAIN_DEFAULTS.img_size,
                   help="square image size in pixels")
    p.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS.batch_size,
                   help="images per step")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="timed seconds per row and per training/inference")
    p.add_argument("--min-steps", type=int, default=2,
                   help="timed steps per row at least, however long they take")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps first (they also compile, with --compile)")
    p.add_argument("--compile", action="store_true",
                   help="add every setting compiled with torch.compile (slow on a CPU)")
    p.add_argument("--onnx", action="store_true",
                   help="add an inference row of the model exported to ONNX and run by ONNX "
                   "Runtime (fp32; its CUDA provider on a GPU when installed)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


def check_options(options: argparse.Namespace) -> None:
    check_minimum({name: getattr(options, name)
                   for name in ("base_channels", "depth", "img_size", "batch_size", "min_steps")})
    check_minimum({name: getattr(options, name) for name in ("seconds", "warmup")}, minimum=0)


def settings_to_measure(device: torch.device, with_compile: bool) -> list[Setting]:
    """fp32 without channels_last first: the baseline of the speed-up columns."""
    precisions = ["fp32"]
    if device.type != "cuda" or torch.cuda.is_bf16_supported():
        precisions.append("bf16")
    if device.type != "cpu":
        precisions.append("fp16")
    plain = [Setting(p, channels_last) for p in precisions for channels_last in (False, True)]
    if with_compile:
        return plain + [Setting(s.precision, s.channels_last, compile=True) for s in plain]
    if device.type == "cuda":
        return plain + [Setting(precisions[1], channels_last=True, compile=True)]
    return plain


# ---------------------------------------------------------------- device helpers


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: peak allocated since :func:`reset_peak_memory`; elsewhere: the process's peak
    resident set size so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # Unix only; imported here so that CUDA runs on Windows still work

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


# ---------------------------------------------------------------- what is timed


def flops_per_image(config: UNetConfig, img_size: int) -> dict[str, int]:
    """FLOPs of one ``img_size`` image: ``{"inference": forward, "train": forward + backward}``,
    counted on the meta device (shapes only, nothing computed)."""
    with torch.device("meta"):
        model = build_model(config)
        image = torch.empty(1, 3, img_size, img_size)
        mask = torch.empty(1, 1, img_size, img_size)
    with FlopCounterMode(display=False) as inference:
        model.eval()(image)
    with FlopCounterMode(display=False) as training:
        SegmentationLoss()(model.train()(image), mask).backward()
    return {"inference": inference.get_total_flops(), "train": training.get_total_flops()}


def random_batch(batch_size: int, img_size: int,
                 hardware: Hardware) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking images ``(B, 3, S, S)`` and ``{0, 1}`` masks ``(B, 1, S, S)``, moved
    to the device as train.py moves its batches."""
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(batch_size, 3, img_size, img_size, generator=generator),
             "mask": (torch.rand(batch_size, 1, img_size, img_size, generator=generator) > 0.5
                      ).float()}
    return hardware.batch(batch)


def training_step(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor,
                  hardware: Hardware) -> Callable[[], None]:
    """One optimisation step of train.py's loop, with its default hyper-parameters."""
    optimisation = Optimisation.create(model, hardware, TRAIN_DEFAULTS.lr,
                                       TRAIN_DEFAULTS.weight_decay, TRAIN_DEFAULTS.loss,
                                       TRAIN_DEFAULTS.grad_clip)
    return lambda: optimisation.step(image, mask)


def inference_step(model: torch.nn.Module, image: torch.Tensor,
                   hardware: Hardware) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode(), hardware.autocast():
            model(image)
    return step


def images_per_second(step: Callable[[], object], batch_size: int, hardware: Hardware,
                      options: argparse.Namespace) -> float:
    """Images per second of ``step`` after ``options.warmup`` untimed calls, over at least
    ``options.seconds`` and ``options.min_steps`` calls."""
    for _ in range(options.warmup):
        step()
    hardware.synchronize()
    started, steps = time.perf_counter(), 0
    while steps < options.min_steps or time.perf_counter() - started < options.seconds:
        step()
        steps += 1
    hardware.synchronize()
    return steps * batch_size / (time.perf_counter() - started)


def measure(setting: Setting, config: UNetConfig, device: torch.device,
            options: argparse.Namespace) -> dict[str, float]:
    """Images per second and peak memory of inference and training for one setting."""
    torch.manual_seed(0)
    hardware = Hardware(device, autocast_dtype(setting.precision, device), setting.channels_last)
    model = hardware.module(build_model(config))
    if setting.compile:
        torch.compiler.reset()  # each row compiles afresh, never up against the recompile limit
    runner = torch.compile(model) if setting.compile else model
    image, mask = random_batch(options.batch_size, options.img_size, hardware)
    result = {}

    def time_phase(phase: str, step: Callable[[], object]) -> None:
        reset_peak_memory(device)
        result[f"{phase}_img_s"] = images_per_second(step, options.batch_size, hardware, options)
        result[f"{phase}_peak_mib"] = peak_memory_mib(device)

    # Inference first, before gradients and optimiser state take memory.
    time_phase("inference", inference_step(runner.eval(), image, hardware))
    time_phase("train", training_step(runner.train(), image, mask, hardware))
    return result


def measure_onnx(config: UNetConfig, device: torch.device,
                 options: argparse.Namespace) -> dict[str, Any]:
    """Inference images per second of the model exported to ONNX, in ONNX Runtime."""
    from models.checkpoint import ModelBundle
    from models.onnx_model import OnnxRunner, export_onnx

    torch.manual_seed(0)
    bundle = ModelBundle(config, build_model(config).state_dict(), options.img_size,
                         (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(bundle, Path(tmp) / "model.onnx")
        runner = OnnxRunner(path, device.type)
        image = torch.randn(options.batch_size, 3, options.img_size, options.img_size)
        cpu = Hardware(torch.device("cpu"))  # the runner takes and returns CPU tensors
        reset_peak_memory(device)
        rate = images_per_second(lambda: runner(image), options.batch_size, cpu, options)
    return {"setting": f"{runner.describe()}, fp32", "precision": "fp32",
            "channels_last": False, "compile": False, "train_img_s": None,
            "train_peak_mib": None, "inference_img_s": rate,
            "inference_peak_mib": peak_memory_mib(device)}


# ---------------------------------------------------------------- report


def benchmark(options: argparse.Namespace) -> dict:
    """Every row's numbers, plus what they were measured on."""
    check_options(options)
    device = select_device(options.device)
    configure_backends(device)
    config = UNetConfig(base_channels=options.base_channels, depth=options.depth,
                        norm=options.norm, deep_supervision=TRAIN_DEFAULTS.deep_supervision)
    flops = flops_per_image(config, options.img_size)
    rows = []
    for setting in settings_to_measure(device, options.compile):
        print(f"measuring {setting.name(device)} ...", file=sys.stderr, flush=True)
        rows.append({"setting": setting.name(device), "precision": setting.precision,
                     "channels_last": setting.channels_last, "compile": setting.compile,
                     **measure(setting, config, device, options)})
    if options.onnx:
        print("measuring ONNX Runtime ...", file=sys.stderr, flush=True)
        rows.append(measure_onnx(config, device, options))
    add_rates(rows, flops)
    return {"device": describe(device), "torch": torch.__version__,
            "model": config.to_dict(), "parameters": count_parameters(build_model(config)),
            "img_size": options.img_size, "batch_size": options.batch_size,
            "flops_per_image": flops, "peak_memory": memory_meaning(device), "rows": rows}


def add_rates(rows: list[dict], flops: dict[str, int]) -> None:
    """Achieved TFLOP/s, and speed-ups over the first row (fp32 without channels_last)."""
    baseline = rows[0]
    for row in rows:
        for phase in ("train", "inference"):
            rate = row[f"{phase}_img_s"]
            row[f"{phase}_tflops"] = None if rate is None else flops[phase] * rate / 1e12
            row[f"{phase}_speedup"] = (None if rate is None
                                       else rate / baseline[f"{phase}_img_s"])


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def memory_meaning(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the row's training or inference"
    return "process peak resident set size so far (ru_maxrss; never decreases over rows)"


def number(value: float | None, template: str = "{}") -> str:
    """``value`` to three significant digits (``-`` for none), placed in ``template``."""
    if value is None:
        return "-"
    return template.format(f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}")


def markdown(results: dict) -> str:
    flops = results["flops_per_image"]
    lines = [
        f"U-Net {results['parameters'] / 1e6:.2f} M parameters (base channels "
        f"{results['model']['base_channels']}, depth {results['model']['depth']}), "
        f"{results['img_size']}x{results['img_size']}, batch {results['batch_size']}, "
        f"on {results['device']}, torch {results['torch']}",
        f"FLOPs per image: {flops['inference'] / 1e9:.3g} G inference, "
        f"{flops['train'] / 1e9:.3g} G training (forward + backward); speed-ups are over the "
        f"first row; peak memory: {results['peak_memory']}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c == "setting" else "---:" for c in COLUMNS) + "|",
    ]
    for row in results["rows"]:
        cells = [row["setting"]]
        for phase in ("train", "inference"):
            cells.append(number(row[f"{phase}_img_s"]))
        cells += ["-" if row[f"{phase}_speedup"] is None else f"{row[f'{phase}_speedup']:.2f}x"
                  for phase in ("train", "inference")]
        cells += [number(row[f"{phase}_tflops"]) for phase in ("train", "inference")]
        cells += ["-" if row[f"{phase}_peak_mib"] is None else f"{row[f'{phase}_peak_mib']:.0f}"
                  for phase in ("train", "inference")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(options: argparse.Namespace) -> int:
    results = benchmark(options)
    print(markdown(results))
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_script(lambda: report(options), oom_hint="lower --batch-size or --img-size")


if __name__ == "__main__":
    sys.exit(main())
