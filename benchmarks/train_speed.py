"""Training speed on this machine: one optimizer step of each stage, FP32 against bf16 autocast.

    python -m benchmarks.train_speed [--config configs/small_continue.toml] [--init models/default]
                                     [--steps 12] [--quality-steps 0] [--out DIR]

Two trainers start from the same weights (``--init``), one with ``[train] amp``
off (FP32) and one with it on (bf16 autocast where the CPU has native bf16,
``training.amp``), and take turns on the same pre-rendered batches, so a load that
comes and goes hits both alike. The figure is the median time of one
``Trainer.train_step`` (forward, loss, backward, Adam, moving average): data
rendering, which the trainer's workers do beside the steps, is left out.

Before any step, one forward pass of each precision on the same batch shows what
bf16 changes in the output. ``--quality-steps N`` then trains both N more steps
of the config's last stage on the same fresh batches and validates their weights
on the built-in validation renders (in FP32): the bf16 run's cost to quality.

Writes ``train_speed.json`` and ``train_speed.md`` beside this machine's benchmark
report unless ``--out`` says otherwise.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.machine import REPO, describe_machine
from benchmarks.model_source import shown
from benchmarks.side_report import write_side_report


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Training speed: FP32 against bf16 autocast",
        "",
        f"{m['cpu']} ({', '.join(m['cpu_features'])}), torch {m['packages'].get('torch')}, "
        f"{result['threads']} threads; `{result['config']}`, batch {result['batch']} x "
        f"{result['crop']}², from `{result['init']}`. {result['precision_line']}.",
        "",
        "Median seconds of one training step (forward, loss, backward, Adam, moving average; "
        "data rendering excluded), the precisions taking turns on the same batches:",
        "",
        "| stage | FP32 s/step | FP32 steps/s | bf16 s/step | bf16 steps/s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for stage, row in result["stages"].items():
        fp32, bf16 = row["fp32"], row.get("bf16")
        tail = (
            f"{bf16['median_s']:.3f} | {bf16['steps_per_s']:.2f} | {fp32['median_s'] / bf16['median_s']:.2f}x"
            if bf16
            else "n/a | n/a | n/a"
        )
        lines.append(f"| {stage} | {fp32['median_s']:.3f} | {fp32['steps_per_s']:.2f} | {tail} |")
    agreement = result.get("agreement")
    if agreement:
        lines += [
            "",
            f"Same weights, one batch: the bf16 output against FP32 {agreement['output_psnr_db']:.1f} dB, "
            f"largest map difference {agreement['map_max_abs_diff']:.4f} map units.",
        ]
    quality = result.get("quality")
    if quality:
        lines += [
            "",
            f"After {quality['steps']} more `{quality['stage']}` steps each on the same batches, "
            "validated in FP32 on the built-in renders:",
            "",
            "| precision | PSNR in | PSNR out | SSIM out | map MAE | PSNR from the true map |",
            "|---|---|---|---|---|---|",
        ]
        for name in result["precisions"]:
            q = quality[name]
            lines.append(
                f"| {name} | {q['psnr_in']:.3f} | {q['psnr_out']:.3f} | {q['ssim_out']:.4f} | "
                f"{q['map_mae']:.4f} | {q['psnr_true_map']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_speed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "small_continue.toml")
    parser.add_argument("--init", type=Path, default=REPO / "models" / "default", help="starting checkpoint")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per stage and precision")
    parser.add_argument("--quality-steps", type=int, default=0, help="paired steps before validating both")
    parser.add_argument("--out", type=Path, help="report folder (default: this machine's CPU report)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.quality_steps < 0:
        print("error: --steps must be >= 1 and --quality-steps >= 0", file=sys.stderr)
        return 2
    from training.speed import measure  # PyTorch, in this process only

    try:
        result = measure(args.config, args.init, args.steps, args.quality_steps)
    except (OSError, ValueError) as exc:  # a bad config, checkpoint or data folder: one line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result.update(
        config=shown(args.config), init=shown(args.init), machine=describe_machine(result["threads"])
    )
    write_side_report(args.out, "train_speed", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
