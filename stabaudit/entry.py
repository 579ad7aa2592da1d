"""The `stabaudit` command's entry point: signal handlers first, then the command line's imports."""

from __future__ import annotations


def main() -> None:
    # Before typer, click and the heavy imports (torch, onnx, onnxruntime): a SIGINT or SIGTERM
    # from here on ends in one line and exit 130 or 143, never a KeyboardInterrupt traceback.
    from stabaudit import interrupts

    interrupts.install()
    from stabaudit.limits import tune_allocator

    tune_allocator()  # before the large allocations: the kernel zeroes each fresh mapping again
    from stabaudit.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
